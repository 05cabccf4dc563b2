//! Shell-style globs for `clients.limits[].match`: `*` any run of
//! characters, `?` one byte (names are ASCII); everything else literal.

/// A validated glob, matched without allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

/// Longest pattern: a cgroup path is at most a few hundred bytes.
const MAX_LEN: usize = 512;

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        if text.len() > MAX_LEN {
            return Err(format!("{} bytes long, at most {MAX_LEN}", text.len()));
        }
        if text.chars().any(char::is_control) {
            return Err("contains a control character".into());
        }
        Ok(Glob(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Iterative matching with one backtrack point: linear in practice,
    /// never exponential.
    pub fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.0.as_bytes(), text.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == b'*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = |p: &str, t: &str| Glob::new(p).unwrap().matches(t);
        assert!(g("kubelet", "kubelet"));
        assert!(!g("kubelet", "kubelet2"));
        assert!(g("kube-*", "kube-proxy"));
        assert!(g("ns/name-*", "ns/name-x7k2p"));
        assert!(!g("ns/name-*", "other/name-x7k2p"));
        assert!(g("*", ""));
        assert!(g("a?c", "abc"));
        assert!(g("*a*b*", "xxaxxbxx"));
        assert!(!g("*a*b", "xxaxxbxx"));
        assert!(Glob::new("").is_err());
    }
}
