//! Reading directive arguments: blocks, single values, numbers and times,
//! each refusal naming the directive's line.

use super::ImportError;
use super::duration::to_humantime;
use super::parse::Directive;

pub(super) fn block(d: &Directive) -> Result<&[Directive], ImportError> {
    d.block
        .as_deref()
        .ok_or_else(|| ImportError::at(d.line, format!("\"{}\" must be a block {{ … }}", d.name)))
}

pub(super) fn one_arg(d: &Directive) -> Result<&str, ImportError> {
    if d.block.is_some() {
        return Err(ImportError::at(
            d.line,
            format!("\"{}\" does not take a block", d.name),
        ));
    }
    match d.args.as_slice() {
        [a] => Ok(a),
        _ => Err(ImportError::at(
            d.line,
            format!("\"{}\" takes exactly one value", d.name),
        )),
    }
}

pub(super) fn one_arg_block(d: &Directive) -> Result<&String, ImportError> {
    block(d)?;
    match d.args.as_slice() {
        [a] => Ok(a),
        _ => Err(ImportError::at(
            d.line,
            format!("\"{}\" takes exactly one name", d.name),
        )),
    }
}

pub(super) fn number(d: &Directive, text: &str, min: u64, max: u64) -> Result<u64, ImportError> {
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ImportError::at(
            d.line,
            format!(
                "\"{}\": \"{text}\" must be a number between {min} and {max}",
                d.name
            ),
        )),
    }
}

pub(super) fn time(d: &Directive, text: &str) -> Result<String, ImportError> {
    to_humantime(text).ok_or_else(|| {
        ImportError::at(
            d.line,
            format!(
                "\"{}\": \"{text}\" is not an nginx time (like 3s, 500ms, 10m)",
                d.name
            ),
        )
    })
}

pub(super) fn positive_time(d: &Directive) -> Result<String, ImportError> {
    let t = time(d, one_arg(d)?)?;
    if humantime::parse_duration(&t).is_ok_and(|v| v.is_zero()) {
        return Err(ImportError::at(
            d.line,
            format!("\"{}\" must be greater than 0 for cplb", d.name),
        ));
    }
    Ok(t)
}
