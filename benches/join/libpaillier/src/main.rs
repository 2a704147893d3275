//! Key generation, encryption, addition and decryption with `libpaillier` 0.7.0-rc0 (2048-bit
//! modulus), one thread.

use std::time::Instant;

use libpaillier::paillier2048::DecryptionKey;

fn main() {
    let t = Instant::now();
    let key = DecryptionKey::random().expect("a key");
    println!("libpaillier 0.7.0-rc0 key generation: {:?}", t.elapsed());
    let public = key.encryption_key();
    let n = 50u32;
    let t = Instant::now();
    // The crate refuses to encrypt zero, so the messages start at one.
    let ciphertexts: Vec<_> = (1..=n)
        .map(|i| public.encrypt(u64::from(i).to_be_bytes()).expect("an encryption").0)
        .collect();
    println!("encryption: {:?} each", t.elapsed() / n);
    let t = Instant::now();
    let mut sum = ciphertexts[0];
    for c in &ciphertexts[1..] {
        sum = public.add(&sum, c).expect("an addition");
    }
    println!("addition: {:?} each", t.elapsed() / (n - 1));
    let t = Instant::now();
    let plain = key.decrypt(&sum).expect("a decryption");
    println!("decryption: {:?} (sum {plain:?}, big-endian)", t.elapsed());
}
