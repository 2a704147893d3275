//! Column classifier behind `veil catalog scan`: looks at the values of a table, column by
//! column, and proposes a [`ColumnTag`] for each column, with counts and a one-sentence reason.
//!
//! Reports never contain values: distinct values are counted through SHA-256 hashes, and the
//! reason only quotes counts, percentages, detector names and the column name.
//!
//! Cells are trimmed; an empty cell is not a value. Each value is counted under at most one
//! [`Detector`], the first that matches in the order PRC resident id, US SSN, e-mail, bank card,
//! date of birth, phone, person name (so an 18-digit id that happens to pass Luhn is not also
//! counted as a card, and a date is never a phone number).
//!
//! Proposal rules, first match wins (percentages are of non-empty values):
//! 1. at least 50% match a direct-identifier detector (PRC resident id, US SSN, e-mail, phone,
//!    bank card, person name) → [`ColumnTag::Identifier`];
//! 2. at least 50% are dates of birth → [`ColumnTag::QuasiIdentifier`];
//! 3. the column name suggests a quasi-identifier (a word `zip`, `zipcode`, `postcode`,
//!    `postal`, `age`, `gender`, `sex`, `date`, `city`, `address`, or anything suggesting birth;
//!    邮编, 年龄, 性别, 日期, 城市, 地址) → [`ColumnTag::QuasiIdentifier`];
//! 4. at least 50% are calendar dates (under a name that does not suggest birth)
//!    → [`ColumnTag::QuasiIdentifier`];
//! 5. the column name contains `diagnosis`, `disease`, `salary`, `income`, `religion`,
//!    `health`, `medical`, `ethnicity` (or 诊断, 疾病, 工资, 收入, 宗教, 健康, 医疗, 民族)
//!    → [`ColumnTag::Sensitive`];
//! 6. at least 20 values, no repeated value, and not a column of decimal numbers
//!    → [`ColumnTag::Identifier`] (a unique key);
//! 7. the column name suggests a key (a word `id`, `key`, `uuid`, `guid`, `tailnum`, `vin`,
//!    `account`, `customer`, `member`, or ending in `id`: `patientid`), its values are not all
//!    numbers, and at least 20 are distinct and at least 1% of the values are distinct (a key
//!    repeated over rows, such as an aircraft's tail number over its flights, still names an
//!    entity) → [`ColumnTag::Identifier`] (a join key: list it in `join_keys` to match on it);
//! 8. otherwise [`ColumnTag::General`].
//!
//! Column-name words are split on non-alphanumeric characters and camelCase boundaries, so
//! `page`, `ethnicity` or `updated` do not count as `age`, `city` or `date`.

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest, Sha256};

/// Tags a column may carry.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ColumnTag {
    /// Directly identifies a person or record (id numbers, e-mail, phone, unique keys).
    Identifier,
    /// Identifies in combination with other columns (birth date, postal code, gender, ...).
    QuasiIdentifier,
    /// Sensitive attribute (health, income, religion, ...).
    Sensitive,
    /// Nothing identifying or sensitive was found.
    General,
}

/// What kind of personal data a value looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Detector {
    /// 18-character PRC resident identity number with a valid GB 11643-1999 check character.
    PrcResidentId,
    /// US social security number (`ddd-dd-dddd`, excluding never-issued ranges).
    NationalId,
    /// Telephone number in international or common national notation.
    Phone,
    /// E-mail address.
    Email,
    /// Payment card number passing the Luhn check.
    BankCard,
    /// Calendar date in a column whose name suggests birth.
    DateOfBirth,
    /// Person name in a column whose name suggests names.
    PersonName,
}

impl Detector {
    fn is_direct_identifier(self) -> bool {
        !matches!(self, Detector::DateOfBirth)
    }

    fn describe(self) -> &'static str {
        match self {
            Detector::PrcResidentId => "PRC resident ID numbers with a valid check digit",
            Detector::NationalId => "US social security numbers",
            Detector::Phone => "phone numbers",
            Detector::Email => "e-mail addresses",
            Detector::BankCard => "bank card numbers passing the Luhn check",
            Detector::DateOfBirth => "dates of birth",
            Detector::PersonName => "person names",
        }
    }
}

/// Distinct values are tracked exactly up to this many per column.
pub const DISTINCT_CAP: usize = 100_000;

/// Minimum number of values before an all-distinct column is proposed as a unique key.
const MIN_UNIQUE_KEY_VALUES: u64 = 20;

/// Accumulates statistics column by column; feed it rows, then call [`Scanner::finish`].
pub struct Scanner {
    columns: Vec<ColumnStats>,
}

/// The proposal and statistics for one column. Contains no values.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ColumnReport {
    /// Column name, as given in the header.
    pub column: String,
    /// Number of non-empty cells seen.
    pub values: u64,
    /// Distinct non-empty values, exact up to [`DISTINCT_CAP`].
    pub distinct: u64,
    /// True if there were more distinct values than [`DISTINCT_CAP`] (then `distinct` is the cap).
    pub distinct_capped: bool,
    /// Detectors that matched at least one value, with counts, by count descending.
    pub matches: Vec<(Detector, u64)>,
    /// Proposed tag.
    pub proposed: ColumnTag,
    /// A short sentence explaining the proposal.
    pub reason: String,
}

impl Scanner {
    /// Starts a scan of a table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Scanner { columns: header.iter().map(|h| ColumnStats::new(h)).collect() }
    }

    /// Adds one row; cells beyond the header are ignored, missing cells count as empty.
    pub fn push_row(&mut self, cells: &[&str]) {
        for (i, column) in self.columns.iter_mut().enumerate() {
            column.push(cells.get(i).copied().unwrap_or(""));
        }
    }

    /// Ends the scan and returns one report per column, in header order.
    pub fn finish(self) -> Vec<ColumnReport> {
        self.columns.into_iter().map(ColumnStats::report).collect()
    }
}

/// What a column name suggests.
#[derive(Default)]
struct HeaderHints {
    birth: bool,
    name: bool,
    quasi: Option<&'static str>,
    sensitive: Option<&'static str>,
    key: Option<String>,
}

impl HeaderHints {
    fn of(header: &str) -> Self {
        let lower = header.trim_start_matches('\u{feff}').trim().to_lowercase();
        let words = header_words(header);
        let has_word = |w: &str| words.iter().any(|x| x == w);
        let birth = ["birth", "dob", "born", "出生"].iter().any(|k| lower.contains(k));
        let name =
            ["name", "姓名", "patient", "customer", "holder"].iter().any(|k| lower.contains(k));
        const QUASI_WORDS: [&str; 10] = [
            "zip", "zipcode", "postcode", "postal", "age", "gender", "sex", "date", "city",
            "address",
        ];
        const QUASI_CJK: [&str; 6] = ["邮编", "年龄", "性别", "日期", "城市", "地址"];
        let quasi = if birth {
            Some("birth")
        } else {
            QUASI_WORDS
                .into_iter()
                .find(|k| has_word(k))
                .or_else(|| QUASI_CJK.into_iter().find(|k| lower.contains(k)))
        };
        const SENSITIVE: &str = "diagnosis disease salary income religion health medical ethnicity \
                                 诊断 疾病 工资 收入 宗教 健康 医疗 民族";
        let sensitive = SENSITIVE.split_whitespace().find(|k| lower.contains(k));
        const KEY_WORDS: [&str; 9] =
            ["id", "key", "uuid", "guid", "tailnum", "vin", "account", "customer", "member"];
        let key = words
            .iter()
            .find(|w| KEY_WORDS.contains(&w.as_str()) || (w.len() > 3 && w.ends_with("id")))
            .cloned();
        HeaderHints { birth, name, quasi, sensitive, key }
    }
}

/// Lower-cased words of a column name, split on non-alphanumerics and camelCase boundaries.
fn header_words(header: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for c in header.chars() {
        if (!c.is_alphanumeric() || (prev_lower && c.is_uppercase())) && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Running statistics of one column.
#[derive(Default)]
struct ColumnStats {
    name: String,
    hints: HeaderHints,
    values: u64,
    hashes: HashSet<[u8; 32]>,
    capped: bool,
    repeated: bool,
    counts: BTreeMap<Detector, u64>,
    dates: u64,
    non_numeric: bool,
    any_decimal: bool,
}

impl ColumnStats {
    fn new(name: &str) -> Self {
        ColumnStats { name: name.to_owned(), hints: HeaderHints::of(name), ..Default::default() }
    }

    fn push(&mut self, cell: &str) {
        let value = cell.trim();
        if value.is_empty() {
            return;
        }
        self.values += 1;
        let hash: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if self.hashes.contains(&hash) {
            self.repeated = true;
        } else if self.hashes.len() < DISTINCT_CAP {
            self.hashes.insert(hash);
        } else {
            self.capped = true;
        }
        let date_year = parse_date(value).filter(|y| (1900..=2099).contains(y));
        if date_year.is_some() {
            self.dates += 1;
        }
        if let Some(d) = classify(value, &self.hints, date_year) {
            *self.counts.entry(d).or_default() += 1;
        }
        self.non_numeric |= !is_number(value);
        self.any_decimal |= value.contains(['.', 'e', 'E']);
    }

    fn report(self) -> ColumnReport {
        let mut matches: Vec<(Detector, u64)> = self.counts.iter().map(|(&d, &c)| (d, c)).collect();
        matches.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let (proposed, reason) = self.propose(&matches);
        ColumnReport {
            column: self.name,
            values: self.values,
            distinct: self.hashes.len() as u64,
            distinct_capped: self.capped,
            matches,
            proposed,
            reason,
        }
    }

    fn propose(&self, matches: &[(Detector, u64)]) -> (ColumnTag, String) {
        use ColumnTag::{General, Identifier, QuasiIdentifier, Sensitive};
        let n = self.values;
        if n == 0 {
            return (General, "the column has no non-empty values".to_owned());
        }
        let share = |count: u64| format!("{}% of {} values", percent(count, n), thousands(n));
        let direct: Vec<(Detector, u64)> =
            matches.iter().copied().filter(|(d, _)| d.is_direct_identifier()).collect();
        let direct_total: u64 = direct.iter().map(|(_, c)| c).sum();
        let dob = self.counts.get(&Detector::DateOfBirth).copied().unwrap_or(0);
        let mostly_dates = majority(self.dates, n);
        let decimals = !self.non_numeric && self.any_decimal;
        match (direct.first(), self.hints.quasi, self.hints.sensitive) {
            (Some(&(top, c)), ..) if majority(c, n) => {
                (Identifier, format!("{} are {}", share(c), top.describe()))
            }
            (Some(&(top, _)), ..) if majority(direct_total, n) => (
                Identifier,
                format!(
                    "{} look like direct identifiers, mostly {}",
                    share(direct_total),
                    top.describe()
                ),
            ),
            _ if majority(dob, n) => {
                (QuasiIdentifier, format!("{} are dates of birth", share(dob)))
            }
            (_, Some(keyword), _) => {
                let dates = if mostly_dates {
                    format!("; {} are dates", share(self.dates))
                } else {
                    String::new()
                };
                (
                    QuasiIdentifier,
                    format!("the column name suggests a quasi-identifier ({keyword}){dates}"),
                )
            }
            _ if mostly_dates => (
                QuasiIdentifier,
                format!(
                    "{} are calendar dates, which can identify in combination",
                    share(self.dates)
                ),
            ),
            (_, _, Some(keyword)) => {
                (Sensitive, format!("the column name suggests sensitive data ({keyword})"))
            }
            _ if n >= MIN_UNIQUE_KEY_VALUES && !self.repeated && !decimals => {
                let checked =
                    if self.capped { " (checked for the first 100,000 distinct)" } else { "" };
                (
                    Identifier,
                    format!(
                        "all {} values are distinct{checked}, so the column may be a unique key",
                        thousands(n)
                    ),
                )
            }
            _ if self.hints.key.is_some()
                && self.non_numeric
                && self.hashes.len() >= MIN_UNIQUE_KEY_VALUES as usize
                && self.hashes.len() as u64 * 100 >= n =>
            {
                let word = self.hints.key.as_deref().unwrap_or_default();
                (
                    Identifier,
                    format!(
                        "the column name suggests a key ({word}) and {} of {} values are distinct, so the column may name an entity (a join key)",
                        thousands(self.hashes.len() as u64),
                        thousands(n)
                    ),
                )
            }
            _ if direct_total + dob > 0 => (
                General,
                format!("only {} match a personal-data pattern", share(direct_total + dob)),
            ),
            _ => (
                General,
                format!("no personal-data pattern or unique key in {} values", thousands(n)),
            ),
        }
    }
}

/// `count` is at least half of `n`.
fn majority(count: u64, n: u64) -> bool {
    count > 0 && u128::from(count) * 2 >= u128::from(n)
}

/// Integer percentage, rounded down (so 100% means all).
fn percent(count: u64, n: u64) -> u64 {
    (u128::from(count) * 100 / u128::from(n.max(1))) as u64
}

/// `1234567` → `"1,234,567"`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The first detector matching a trimmed, non-empty value (see the module doc for the order).
fn classify(value: &str, hints: &HeaderHints, date_year: Option<u32>) -> Option<Detector> {
    if is_prc_resident_id(value) {
        Some(Detector::PrcResidentId)
    } else if is_us_ssn(value) {
        Some(Detector::NationalId)
    } else if is_email(value) {
        Some(Detector::Email)
    } else if is_bank_card(value) {
        Some(Detector::BankCard)
    } else if let Some(year) = date_year {
        (hints.birth && (1900..=2025).contains(&year)).then_some(Detector::DateOfBirth)
    } else if is_phone(value) {
        Some(Detector::Phone)
    } else if hints.name && is_person_name(value) {
        Some(Detector::PersonName)
    } else {
        None
    }
}

fn is_leap(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn valid_date(year: u32, month: u32, day: u32) -> bool {
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// Parses a decimal ASCII number of 1 to 4 digits.
fn num(s: &str) -> Option<u32> {
    (!s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// The year of a valid calendar date written `YYYY-MM-DD`, `YYYY/MM/DD`, `DD/MM/YYYY` or
/// `MM/DD/YYYY` (day and month may have one digit in the last two forms).
fn parse_date(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() == 10 && (b[4] == b'-' || b[4] == b'/') && b[7] == b[4] {
        let (y, m, d) = (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?);
        return valid_date(y, m, d).then_some(y);
    }
    let parts: Vec<&str> = s.split('/').collect();
    if let [a, b, y] = parts[..] {
        if a.len() > 2 || b.len() > 2 || y.len() != 4 {
            return None;
        }
        let (a, b, y) = (num(a)?, num(b)?, num(y)?);
        return (valid_date(y, b, a) || valid_date(y, a, b)).then_some(y);
    }
    None
}

/// PRC resident identity number (GB 11643-1999): 17 digits with a valid birth date, then a
/// check character.
fn is_prc_resident_id(s: &str) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let b = s.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let (Some(y), Some(m), Some(d)) = (num(&s[6..10]), num(&s[10..12]), num(&s[12..14])) else {
        return false;
    };
    if !(1900..=2099).contains(&y) || !valid_date(y, m, d) {
        return false;
    }
    let sum: u32 = b[..17].iter().zip(WEIGHTS).map(|(c, w)| u32::from(c - b'0') * w).sum();
    CHECK[(sum % 11) as usize] == b[17].to_ascii_uppercase()
}

/// US SSN `ddd-dd-dddd`: area not 000, 666 or 9xx; group not 00; serial not 0000.
fn is_us_ssn(s: &str) -> bool {
    is_ssn_shape(s)
        && !matches!(&s[0..3], "000" | "666")
        && !s.starts_with('9')
        && &s[4..6] != "00"
        && &s[7..11] != "0000"
}

/// `local@domain.tld`: allowed local characters, dotted domain labels, alphabetic TLD of 2+.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&c))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let labels: Vec<&str> = domain.split('.').collect();
    let labels_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    let tld_ok =
        labels.last().is_some_and(|t| t.len() >= 2 && t.bytes().all(|c| c.is_ascii_alphabetic()));
    local_ok && labels_ok && tld_ok
}

fn luhn(digits: &[u8]) -> bool {
    let doubled = |d: u32| if d * 2 > 9 { d * 2 - 9 } else { d * 2 };
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { doubled(u32::from(d)) } else { u32::from(d) })
        .sum();
    sum % 10 == 0
}

/// 13 to 19 digits, single spaces or dashes between groups, Luhn-valid, not one repeated digit.
fn is_bank_card(s: &str) -> bool {
    let b = s.as_bytes();
    let separator = |c: &u8| *c == b' ' || *c == b'-';
    if !b.iter().all(|c| c.is_ascii_digit() || separator(c))
        || !b.first().is_some_and(u8::is_ascii_digit)
        || !b.last().is_some_and(u8::is_ascii_digit)
        || b.windows(2).any(|w| separator(&w[0]) && separator(&w[1]))
    {
        return false;
    }
    let digits: Vec<u8> = b.iter().filter(|c| c.is_ascii_digit()).map(|c| c - b'0').collect();
    (13..=19).contains(&digits.len()) && digits.iter().any(|&d| d != digits[0]) && luhn(&digits)
}

/// Phone number: optional leading `+`, digits with spaces, dashes, parentheses or dots, 7 to 15
/// digits. Without `+` or separators it needs 10-15 digits starting with 0, or 11 digits that
/// form a mainland China mobile (`1[3-9]…`) or a North American number (`1` + NANP).
fn is_phone(s: &str) -> bool {
    let rest = s.strip_prefix('+').unwrap_or(s);
    let plus = rest.len() != s.len();
    let b = rest.as_bytes();
    let is_sep = |c: u8| matches!(c, b' ' | b'-' | b'(' | b')' | b'.');
    if !b.iter().all(|&c| c.is_ascii_digit() || is_sep(c))
        || !b.first().is_some_and(|&c| c.is_ascii_digit() || c == b'(')
        || !b.last().is_some_and(u8::is_ascii_digit)
    {
        return false;
    }
    let digits: Vec<u8> = b.iter().filter(|c| c.is_ascii_digit()).map(|c| c - b'0').collect();
    if !(7..=15).contains(&digits.len()) {
        return false;
    }
    let (open, close) = (rest.find('('), rest.find(')'));
    let parens_ok = rest.matches('(').count() == rest.matches(')').count()
        && rest.matches('(').count() <= 1
        && open <= close;
    if !parens_ok || parse_date(s).is_some() || is_ssn_shape(s) {
        return false;
    }
    if plus {
        return true;
    }
    if b.iter().any(|&c| is_sep(c)) {
        // Dots alone: reject decimals (two groups) and IPv4 addresses (four short groups).
        if !b.iter().any(|&c| matches!(c, b' ' | b'-' | b'(' | b')')) {
            let groups: Vec<&str> = rest.split('.').collect();
            if groups.len() == 2 || (groups.len() == 4 && groups.iter().all(|g| g.len() <= 3)) {
                return false;
            }
        }
        return true;
    }
    match digits[..] {
        [0, ..] => digits.len() >= 10,
        [1, second, _, _, fifth, ..] if digits.len() == 11 => {
            (3..=9).contains(&second) || (second >= 2 && fifth >= 2)
        }
        _ => false,
    }
}

fn is_ssn_shape(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11
        && b.iter()
            .enumerate()
            .all(|(i, c)| if i == 3 || i == 6 { *c == b'-' } else { c.is_ascii_digit() })
}

/// 2-4 capitalised alphabetic words of 2+ letters (inner `-`/`'` allowed), or 2-4 Han characters.
fn is_person_name(s: &str) -> bool {
    let han = |c: char| ('\u{4E00}'..='\u{9FFF}').contains(&c);
    if s.chars().all(han) {
        return (2..=4).contains(&s.chars().count());
    }
    let words: Vec<&str> = s.split_whitespace().collect();
    (2..=4).contains(&words.len()) && words.iter().all(|w| is_name_word(w))
}

fn is_name_word(w: &str) -> bool {
    let mut chars = w.chars();
    let Some(first) = chars.next() else { return false };
    if !(first.is_alphabetic() && first.is_uppercase()) {
        return false;
    }
    let (mut letters, mut after_punct) = (1, false);
    for c in chars {
        if c.is_alphabetic() {
            letters += 1;
            after_punct = false;
        } else if matches!(c, '-' | '\'' | '\u{2019}') && !after_punct {
            after_punct = true;
        } else {
            return false;
        }
    }
    letters >= 2 && !after_punct
}

/// A plain decimal number such as `12`, `-4.0` or `1e3`.
fn is_number(s: &str) -> bool {
    s.bytes().any(|c| c.is_ascii_digit())
        && s.bytes().all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c))
        && s.parse::<f64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completes a 17-digit base with its GB 11643-1999 check character.
    fn with_check(base: &str) -> String {
        let weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
        let sum: u32 = base.chars().zip(weights).map(|(c, w)| c.to_digit(10).unwrap() * w).sum();
        let check = "10X98765432".chars().nth((sum % 11) as usize).unwrap();
        format!("{base}{check}")
    }

    #[test]
    fn prc_resident_ids() {
        let a = with_check("11010519491231002");
        assert_eq!(a, "11010519491231002X");
        assert!(is_prc_resident_id(&a));
        assert!(is_prc_resident_id(&a.to_lowercase()));
        let b = with_check("44030420000229123");
        assert!(is_prc_resident_id(&b));
        let wrong = format!("{}{}", &b[..17], if b.ends_with('0') { '1' } else { '0' });
        assert!(!is_prc_resident_id(&wrong));
        // 2001-02-29 does not exist, even with a correct check character.
        assert!(!is_prc_resident_id(&with_check("44030420010229123")));
        assert!(!is_prc_resident_id(&with_check("44030418991231123")));
        assert!(!is_prc_resident_id("11010519491231002"));
        assert!(!is_prc_resident_id("1101051949123100 X"));
    }

    #[test]
    fn a_key_repeated_over_rows_is_proposed_as_an_identifier_a_count_is_not() {
        let mut scan = Scanner::new(&["tailnum", "flight", "carrier", "paid"]);
        for i in 0..400u32 {
            let tail = format!("N{}AA", 100 + i % 40);
            let row = [tail.as_str(), &(i % 60).to_string(), ["AA", "UA"][i as usize % 2], "12"];
            scan.push_row(&row);
        }
        let reports = scan.finish();
        let tag = |c: &str| reports.iter().find(|r| r.column == c).unwrap().proposed;
        assert_eq!(tag("tailnum"), ColumnTag::Identifier);
        let tailnum = reports.iter().find(|r| r.column == "tailnum").unwrap();
        assert!(tailnum.reason.contains("join key"), "{}", tailnum.reason);
        for general in ["flight", "carrier", "paid"] {
            assert_eq!(tag(general), ColumnTag::General, "{general}");
        }
    }

    #[test]
    fn bank_cards() {
        assert!(is_bank_card("4111 1111 1111 1111"));
        assert!(is_bank_card("4111111111111111"));
        assert!(is_bank_card("4111-1111-1111-1111"));
        assert!(!is_bank_card("4111 1111 1111 1112"));
        assert!(!is_bank_card("0000000000000000"));
        assert!(!is_bank_card("4111  1111 1111 1111"));
        assert!(!is_bank_card("411111111111"));
    }

    #[test]
    fn emails() {
        assert!(is_email("alice.smith+tag@example.co.uk"));
        assert!(is_email("x@mail.example.org"));
        let bad = "alice@example @example.com a@@example.com a@b@example.com a@example.c \
                   a@example.123 a@-x.com .a@example.com plain a_b@example.com. a\tb@example.com";
        for bad in bad.split(' ').chain(["a b@example.com"]) {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn phones() {
        let good = "+86 138 0013 8000|13800138000|(555) 123-4567|+1 (555) 123-4567|555.123.4567|\
                    020-12345678|02012345678|+442071234567|15551234567";
        for good in good.split('|') {
            assert!(is_phone(good), "{good}");
        }
        let bad = "2013 1545 -4.0 11.0 1234567.89 192.168.10.1 1545000000 1545000000000 \
                   1990-05-17 123-45-6789 12a4567890 + 5551234567";
        for bad in bad.split(' ') {
            assert!(!is_phone(bad), "{bad}");
        }
    }

    #[test]
    fn ssns() {
        assert!(is_us_ssn("123-45-6789"));
        let bad = "000-45-6789 666-45-6789 912-45-6789 123-00-6789 123-45-0000 123456789 \
                   123-45-678 12a-45-6789";
        for bad in bad.split(' ') {
            assert!(!is_us_ssn(bad), "{bad}");
        }
    }

    #[test]
    fn names_need_a_name_header() {
        let named = HeaderHints::of("customer_name");
        let other = HeaderHints::of("carrier");
        for v in ["John Smith", "Mary-Jane O'Neil", "Jean Luc Picard", "张伟", "欧阳娜娜"] {
            assert!(is_person_name(v), "{v}");
            assert_eq!(classify(v, &named, None), Some(Detector::PersonName), "{v}");
            assert_eq!(classify(v, &other, None), None, "{v}");
        }
        for v in ["UA", "john smith", "J Smith", "A B C D E", "张", "Smith-", "R2 D2"] {
            assert_eq!(classify(v, &named, None), None, "{v}");
        }
    }

    #[test]
    fn dates_of_birth_need_a_birth_header() {
        let birth = HeaderHints::of("DateOfBirth");
        let cjk = HeaderHints::of("出生日期");
        let other = HeaderHints::of("fl_date");
        for v in ["1990-05-17", "1990/05/17", "17/05/1990", "05/17/1990", "2000-02-29"] {
            let year = parse_date(v);
            assert!(year.is_some(), "{v}");
            assert_eq!(classify(v, &birth, year), Some(Detector::DateOfBirth), "{v}");
            assert_eq!(classify(v, &cjk, year), Some(Detector::DateOfBirth), "{v}");
            assert_eq!(classify(v, &other, year), None, "{v}");
        }
        assert_eq!(parse_date("1990-02-30"), None);
        assert_eq!(parse_date("13/13/1990"), None);
        assert_eq!(classify("2030-01-01", &birth, parse_date("2030-01-01")), None);
        assert_eq!(classify("1850-01-01", &birth, parse_date("1850-01-01")), None);
    }

    #[test]
    fn header_words_split() {
        assert_eq!(header_words("depDelay_min"), ["dep", "delay", "min"]);
        assert_eq!(HeaderHints::of("page_views").quasi, None);
        assert_eq!(HeaderHints::of("ethnicity").quasi, None);
        assert_eq!(HeaderHints::of("ethnicity").sensitive, Some("ethnicity"));
        assert_eq!(HeaderHints::of("ZipCode").quasi, Some("zip"));
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    /// A mixed table: returns (header, rows, values that must never appear in a report).
    fn table() -> (Vec<&'static str>, Vec<Vec<String>>, Vec<String>) {
        let header = "id_number email carrier dep_delay name zip diagnosis order_no born_on";
        let header: Vec<&str> = header.split(' ').collect();
        let first = ["Alice", "Bob", "Carol", "Dmitri", "Evelyn"];
        let last = ["Quixotely", "Zanzibarra", "Fennimore", "Okonkwo", "Vasquez-Lind"];
        let mut rows = Vec::new();
        let mut secrets = Vec::new();
        for i in 0..40u32 {
            let id = with_check(&format!("3301061985{:02}{:02}{:03}", i % 12 + 1, i % 28 + 1, i));
            let email = format!("person.{i}.qz@veil-scan-test.example");
            let name = format!("{} {}", first[i as usize % 5], last[(i as usize / 5) % 5]);
            let dob = format!("19{:02}-{:02}-{:02}", 50 + i, i % 12 + 1, i % 28 + 1);
            secrets.extend([id.clone(), email.clone(), name.clone(), dob.clone()]);
            rows.push(vec![
                id,
                email,
                ["UA", "DL", "AA"][i as usize % 3].to_owned(),
                format!("{}.0", i as i32 - 4),
                name,
                format!("{}", 10_000 + i % 7),
                ["flu", "none"][i as usize % 2].to_owned(),
                format!("ORD{:05}", 77_000 + i),
                dob,
            ]);
        }
        (header, rows, secrets)
    }

    fn scan() -> (Vec<ColumnReport>, Vec<String>) {
        let (header, rows, secrets) = table();
        let mut scanner = Scanner::new(&header);
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            scanner.push_row(&cells);
        }
        (scanner.finish(), secrets)
    }

    #[test]
    fn scanner_proposes_tags() {
        let (reports, _) = scan();
        let tags: Vec<(&str, ColumnTag)> =
            reports.iter().map(|r| (r.column.as_str(), r.proposed)).collect();
        use ColumnTag::*;
        let expected = [
            Identifier,
            Identifier,
            General,
            General,
            Identifier,
            QuasiIdentifier,
            Sensitive,
            Identifier,
            QuasiIdentifier,
        ];
        assert_eq!(tags.iter().map(|t| t.1).collect::<Vec<_>>(), expected, "{tags:?}");
        let id = &reports[0];
        assert_eq!((id.values, id.distinct, id.distinct_capped), (40, 40, false));
        assert_eq!(id.matches[0], (Detector::PrcResidentId, 40));
        assert_eq!(
            id.reason,
            "100% of 40 values are PRC resident ID numbers with a valid check digit"
        );
        assert_eq!(reports[1].matches, [(Detector::Email, 40)]);
        assert!(reports[2].matches.is_empty());
        assert_eq!(reports[2].distinct, 3);
        assert_eq!(reports[4].matches, [(Detector::PersonName, 40)]);
        assert!(reports[7].reason.contains("distinct"), "{}", reports[7].reason);
        assert_eq!(reports[8].matches, [(Detector::DateOfBirth, 40)]);
    }

    #[test]
    fn ragged_rows_and_empty_columns() {
        let mut scanner = Scanner::new(&["a", "b"]);
        scanner.push_row(&["x@example.com"]);
        scanner.push_row(&["y@example.com", " ", "extra"]);
        let reports = scanner.finish();
        assert_eq!(reports[0].values, 2);
        assert_eq!(reports[0].proposed, ColumnTag::Identifier);
        assert_eq!((reports[1].values, reports[1].proposed), (0, ColumnTag::General));
    }

    #[test]
    fn reports_never_contain_values() {
        let (reports, secrets) = scan();
        let debug = format!("{reports:?}");
        let json = serde_json::to_string(&reports).unwrap();
        for secret in &secrets {
            assert!(!debug.contains(secret.as_str()), "debug leaks {secret}");
            assert!(!json.contains(secret.as_str()), "json leaks {secret}");
        }
        assert!(json.contains("\"proposed\":\"quasi-identifier\""));
    }
}
