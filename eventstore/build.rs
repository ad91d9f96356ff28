// The migrations are embedded with `sqlx::migrate!`; rebuild this crate when one is added
// or changed, or a binary would run with an old set.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
