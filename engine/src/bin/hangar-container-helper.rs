//! The container helper as its own small binary, for the engine's tests and
//! for embedders; the `hangar` binary runs the same code as
//! `hangar container-helper`.

fn main() {
    std::process::exit(hangar_engine::containers::helper_main());
}
