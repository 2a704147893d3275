//! Prints the RDP accountant's ε over a grid of (q, σ, steps) at δ = 10⁻⁵, one JSON object a
//! line, for `scripts/check_rdp.py` to compare with an independent implementation:
//!
//! ```text
//! cargo run -q -p veil-learning --example rdp_grid | python3 scripts/check_rdp.py
//! ```

fn main() {
    let delta = 1e-5;
    for q in [0.001, 0.004, 0.01, 0.05, 0.2, 1.0] {
        for sigma in [0.6, 0.8, 1.0, 1.5, 3.0] {
            for steps in [1u64, 10, 100, 1_000, 10_000] {
                let (epsilon, order) = veil_learning::rdp::epsilon(q, sigma, steps, delta)
                    .expect("the grid's parameters are in range");
                println!(
                    "{{\"q\": {q}, \"sigma\": {sigma}, \"steps\": {steps}, \"delta\": {delta}, \"epsilon\": {epsilon}, \"order\": {order}}}"
                );
            }
        }
    }
}
