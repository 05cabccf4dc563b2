//! nginx config tokens: words (bare or quoted), `;`, `{`, `}`, each with the
//! line it starts on. `#` starts a comment only at the start of a word, as in
//! nginx, so `a#b` stays one word.

use super::ImportError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Word(String),
    Semicolon,
    Open,
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub kind: Kind,
    pub line: usize,
}

pub(super) fn tokenize(text: &str) -> Result<Vec<Token>, ImportError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            ';' | '{' | '}' => {
                chars.next();
                let kind = match c {
                    ';' => Kind::Semicolon,
                    '{' => Kind::Open,
                    _ => Kind::Close,
                };
                out.push(Token { kind, line });
            }
            '"' | '\'' => {
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(ImportError::UnterminatedString { line: start }),
                        Some(q) if q == c => break,
                        // nginx keeps the backslash unless it escapes a quote
                        // or another backslash.
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\'' | '\\')) => word.push(e),
                            Some(e) => {
                                if e == '\n' {
                                    line += 1;
                                }
                                word.push('\\');
                                word.push(e);
                            }
                            None => return Err(ImportError::UnterminatedString { line: start }),
                        },
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            word.push(ch);
                        }
                    }
                }
                out.push(Token {
                    kind: Kind::Word(word),
                    line: start,
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(ch) =
                    chars.next_if(|&ch| !ch.is_whitespace() && !matches!(ch, ';' | '{' | '}'))
                {
                    word.push(ch);
                }
                out.push(Token {
                    kind: Kind::Word(word),
                    line,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(String, usize)> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|t| match t.kind {
                Kind::Word(w) => (w, t.line),
                Kind::Semicolon => (";".into(), t.line),
                Kind::Open => ("{".into(), t.line),
                Kind::Close => ("}".into(), t.line),
            })
            .collect()
    }

    #[test]
    fn words_punctuation_comments_and_lines() {
        let got = words("a b;# c {\n\"x y\" 'q\\'s' d#e{}\n");
        let want = [
            ("a", 1),
            ("b", 1),
            (";", 1),
            ("x y", 2),
            ("q's", 2),
            ("d#e", 2),
            ("{", 2),
            ("}", 2),
        ];
        let want: Vec<(String, usize)> = want.iter().map(|(w, l)| (w.to_string(), *l)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn unterminated_quote_names_its_line() {
        assert_eq!(
            tokenize("a;\nb \"c;\n\n"),
            Err(ImportError::UnterminatedString { line: 2 })
        );
    }
}
