//! Tokens to a tree of directives: `name args… ;` or `name args… { … }`.
//! Structure only; what a directive means is `convert`'s business.

use super::ImportError;
use super::lexer::{Kind, Token};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub line: usize,
    /// `Some` for block directives (`stream { … }`), even when empty.
    pub block: Option<Vec<Directive>>,
}

/// Deepest block nesting accepted. A real stream config nests three deep
/// (`stream { upstream { } }`); the cap keeps the recursion (here, in
/// `convert` and in dropping the tree) far from the stack's end on any input.
pub(super) const MAX_DEPTH: usize = 100;

pub(super) fn parse(tokens: &[Token]) -> Result<Vec<Directive>, ImportError> {
    let mut pos = 0;
    let out = parse_block(tokens, &mut pos, None, 0)?;
    Ok(out)
}

/// Parses directives until the `}` closing the block opened on `open_line`
/// (or the end of input at top level, `open_line == None`).
fn parse_block(
    tokens: &[Token],
    pos: &mut usize,
    open_line: Option<usize>,
    depth: usize,
) -> Result<Vec<Directive>, ImportError> {
    let mut out = Vec::new();
    loop {
        let Some(tok) = tokens.get(*pos) else {
            return match open_line {
                Some(line) => Err(ImportError::UnclosedBlock { line }),
                None => Ok(out),
            };
        };
        *pos += 1;
        let name = match &tok.kind {
            Kind::Word(w) => w.clone(),
            Kind::Close => {
                return match open_line {
                    Some(_) => Ok(out),
                    None => Err(ImportError::UnexpectedClose { line: tok.line }),
                };
            }
            Kind::Semicolon => {
                return Err(ImportError::UnexpectedToken {
                    line: tok.line,
                    token: ';',
                });
            }
            Kind::Open => {
                return Err(ImportError::UnexpectedToken {
                    line: tok.line,
                    token: '{',
                });
            }
        };
        let line = tok.line;
        let mut args = Vec::new();
        loop {
            let Some(next) = tokens.get(*pos) else {
                return Err(ImportError::MissingSemicolon { line, name });
            };
            *pos += 1;
            match &next.kind {
                Kind::Word(w) => args.push(w.clone()),
                Kind::Semicolon => {
                    out.push(Directive {
                        name,
                        args,
                        line,
                        block: None,
                    });
                    break;
                }
                Kind::Open => {
                    if depth >= MAX_DEPTH {
                        return Err(ImportError::TooDeep {
                            line: next.line,
                            max: MAX_DEPTH,
                        });
                    }
                    let block = parse_block(tokens, pos, Some(next.line), depth + 1)?;
                    out.push(Directive {
                        name,
                        args,
                        line,
                        block: Some(block),
                    });
                    break;
                }
                // `a b }`: nginx reports the `}`, the directive lacks its `;`.
                Kind::Close => return Err(ImportError::MissingSemicolon { line, name }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lexer::tokenize;
    use super::*;

    fn tree(text: &str) -> Result<Vec<Directive>, ImportError> {
        parse(&tokenize(text)?)
    }

    #[test]
    fn nested_blocks() {
        let got = tree("a 1;\nb {\n c 2 3;\n d {}\n}\n").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "a");
        assert_eq!(got[0].args, ["1"]);
        assert_eq!(got[0].block, None);
        let inner = got[1].block.as_ref().unwrap();
        assert_eq!(inner[0].name, "c");
        assert_eq!(inner[0].line, 3);
        assert_eq!(inner[0].args, ["2", "3"]);
        assert_eq!(inner[1].block, Some(vec![]));
    }

    #[test]
    fn nesting_is_capped_at_the_line_of_the_first_brace_too_deep() {
        let ok = "a {\n".repeat(MAX_DEPTH) + &"}\n".repeat(MAX_DEPTH);
        assert_eq!(tree(&ok).map(|t| t.len()), Ok(1));
        let deep = "a {\n".repeat(200_000);
        assert_eq!(
            tree(&deep),
            Err(ImportError::TooDeep {
                line: MAX_DEPTH + 1,
                max: MAX_DEPTH
            })
        );
    }

    #[test]
    fn structural_errors_name_the_line() {
        assert_eq!(
            tree("a {\n b;\n"),
            Err(ImportError::UnclosedBlock { line: 1 })
        );
        assert_eq!(
            tree("a;\n}\n"),
            Err(ImportError::UnexpectedClose { line: 2 })
        );
        assert_eq!(
            tree("a {\n b\n}\n"),
            Err(ImportError::MissingSemicolon {
                line: 2,
                name: "b".into()
            })
        );
        assert_eq!(
            tree("x\n"),
            Err(ImportError::MissingSemicolon {
                line: 1,
                name: "x".into()
            })
        );
        assert_eq!(
            tree("\n;\n"),
            Err(ImportError::UnexpectedToken {
                line: 2,
                token: ';'
            })
        );
    }
}
