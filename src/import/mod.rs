//! `cplb import-nginx`: turns the nginx `stream` proxy config that cplb
//! replaces into a cplb YAML config. Three stages, each in its own file:
//! `lexer` (tokens with line numbers), `parse` (directives and blocks) and
//! `convert` (the mapping, with a warning for everything it cannot carry;
//! `upstream` for the upstream block, `values` for argument parsing,
//! `known` for the directive names nginx has).

mod convert;
mod duration;
mod emit;
mod error;
mod known;
mod lexer;
mod parse;
mod upstream;
mod values;
mod warnings;

pub use error::ImportError;

/// The converted config and what the conversion could not carry over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// A cplb YAML config, with comments where the meaning changed.
    pub yaml: String,
    /// One line each, starting with `line N:`: directives and parameters
    /// that were ignored or mean something different in cplb.
    pub warnings: Vec<String>,
}

/// Converts the text of an nginx config file.
pub fn convert(text: &str) -> Result<Conversion, ImportError> {
    let tokens = lexer::tokenize(text)?;
    let directives = parse::parse(&tokens)?;
    convert::convert(&directives)
}
