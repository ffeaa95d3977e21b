//! The `storm` command line.

fn main() {
    println!("storm: not built yet");
}
