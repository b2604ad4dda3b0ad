//! The `mupdate` binary: parse the command line and hand over to [`mupdate::app`].

use clap::Parser;

fn main() {
    let cli = mupdate::cli::Cli::parse();
    std::process::exit(mupdate::app::main(cli));
}
