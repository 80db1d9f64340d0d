//! Link every guest at 1 MiB with our linker script, as a plain static
//! (non-PIE) executable: the engine loads PT_LOAD segments at their physical
//! addresses and applies no relocations.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    // Without `-C relocation-model=static` (.cargo/config.toml is only read
    // when cargo runs inside this directory) rustc asks for a static PIE;
    // the later -no-pie wins, and the absolute relocations are resolved.
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-bins=--build-id=none");
}
