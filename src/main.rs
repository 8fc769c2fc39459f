mod arch;

fn main() {}
