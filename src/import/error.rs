/// Why an nginx file cannot be converted. Every message starts with the line
/// it is about, so the command prints `cplb: FILE:LINE: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("{line}: unterminated quoted string")]
    UnterminatedString { line: usize },
    #[error("{line}: unexpected \"}}\"")]
    UnexpectedClose { line: usize },
    #[error("{line}: unexpected \"{token}\"")]
    UnexpectedToken { line: usize, token: char },
    #[error("{line}: \"{{\" is never closed (unexpected end of file)")]
    UnclosedBlock { line: usize },
    #[error("{line}: directive \"{name}\" is not terminated by \";\"")]
    MissingSemicolon { line: usize, name: String },
    #[error("{line}: blocks nested more than {max} deep")]
    TooDeep { line: usize, max: usize },
    #[error("{line}: {reason}")]
    Unusable { line: usize, reason: String },
}

impl ImportError {
    /// The line of the nginx file the error is about (1-based).
    pub fn line(&self) -> usize {
        match self {
            ImportError::UnterminatedString { line }
            | ImportError::UnexpectedClose { line }
            | ImportError::UnexpectedToken { line, .. }
            | ImportError::UnclosedBlock { line }
            | ImportError::MissingSemicolon { line, .. }
            | ImportError::TooDeep { line, .. }
            | ImportError::Unusable { line, .. } => *line,
        }
    }

    pub(super) fn at(line: usize, reason: impl Into<String>) -> ImportError {
        ImportError::Unusable {
            line,
            reason: reason.into(),
        }
    }
}
