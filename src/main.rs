mod host;
mod pci;
fn main() {}
