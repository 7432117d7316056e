//! Bearer tokens with scopes (`read` < `enqueue` < `admin`), compared in constant time.

use axum::{extract::FromRequestParts, http::request::Parts};
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::{problem::ApiError, state::AppState};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read everything (GET routes, the UI), change nothing.
    Read,
    /// Create and read jobs.
    Enqueue,
    /// Everything, including operator actions.
    Admin,
}

/// One configured token.
#[derive(Debug, Clone)]
struct Token {
    /// What it grants.
    scope: Scope,
    /// Written to `audit_log.actor`; never the secret itself.
    name: String,
    /// The bearer secret.
    secret: Vec<u8>,
}

/// The configured tokens (`SLUICE_API_TOKENS`).
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Every token; all are compared on each request so timing reveals nothing.
    tokens: Vec<Token>,
}

impl Tokens {
    /// Parses `scope:token` / `scope:name:token`, comma-separated.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut tokens = Vec::new();
        let mut counts = [0usize; 3];
        for (i, entry) in text.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                return Err(format!("entry {} is empty", i + 1));
            }
            let parts: Vec<&str> = entry.splitn(3, ':').collect();
            let (scope, name, secret) = match parts.as_slice() {
                [scope, secret] => (*scope, None, *secret),
                [scope, name, secret] => (*scope, Some(*name), *secret),
                _ => return Err(format!("entry {} is not scope:token", i + 1)),
            };
            let scope = match scope {
                "read" => Scope::Read,
                "enqueue" => Scope::Enqueue,
                "admin" => Scope::Admin,
                other => {
                    return Err(format!(
                        "entry {}: unknown scope {other:?}; use read, enqueue or admin",
                        i + 1
                    ))
                }
            };
            if secret.is_empty() {
                return Err(format!("entry {}: empty token", i + 1));
            }
            let idx = scope as usize;
            counts[idx] += 1;
            let name = match name {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => format!("{}-token-{}", scope.as_str(), counts[idx]),
            };
            tokens.push(Token {
                scope,
                name,
                secret: secret.as_bytes().to_vec(),
            });
        }
        Ok(Tokens { tokens })
    }

    /// The caller `presented` stands for, if it is one of our tokens.
    pub fn principal(&self, presented: &[u8]) -> Option<Principal> {
        self.find(presented).map(Token::principal)
    }

    /// The caller whose token has this SHA-256 digest: UI sessions keep the digest, never
    /// the token, and look the caller up on every request.
    pub fn principal_by_digest(&self, digest: &[u8]) -> Option<Principal> {
        let mut found = None;
        for token in &self.tokens {
            let d = sha2::Sha256::digest(&token.secret);
            if bool::from(d.as_slice().ct_eq(digest)) {
                found = Some(token.principal());
            }
        }
        found
    }

    /// The token matching `presented`, checked against every entry.
    fn find(&self, presented: &[u8]) -> Option<&Token> {
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.secret.ct_eq(presented)) {
                found = Some(token);
            }
        }
        found
    }
}

impl Token {
    fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            scope: self.scope,
        }
    }
}

impl Scope {
    /// The name used in `SLUICE_API_TOKENS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Enqueue => "enqueue",
            Scope::Admin => "admin",
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Audit actor name.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

fn authenticate(parts: &Parts, state: &AppState, needed: Scope) -> Result<Principal, ApiError> {
    let Some(tokens) = &state.settings.tokens else {
        return Ok(Principal {
            name: "anonymous".into(),
            scope: Scope::Admin,
        });
    };
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized { bad_token: false })?;
    let presented = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized { bad_token: true })?;
    let token = tokens
        .find(presented.trim().as_bytes())
        .ok_or(ApiError::Unauthorized { bad_token: true })?;
    if token.scope < needed {
        return Err(ApiError::Forbidden);
    }
    Ok(Principal {
        name: token.name.clone(),
        scope: token.scope,
    })
}

/// Extractor: any valid token (read).
#[derive(Debug)]
pub struct Reader(pub Principal);

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state, Scope::Read).map(Reader)
    }
}

/// Extractor: an `enqueue` or `admin` token (create and read).
#[derive(Debug)]
pub struct Enqueuer(pub Principal);

/// Extractor: an `admin` token.
#[derive(Debug)]
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Enqueuer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state, Scope::Enqueue).map(Enqueuer)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state, Scope::Admin).map(Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_parse_with_and_without_names() {
        let t = Tokens::parse("enqueue:abc,admin:ops:xyz,read:r1").expect("valid");
        assert_eq!(t.find(b"r1").map(|t| t.name.as_str()), Some("read-token-1"));
        assert_eq!(t.principal(b"r1").map(|p| p.scope), Some(Scope::Read));
        let digest = sha2::Sha256::digest(b"xyz");
        assert_eq!(
            t.principal_by_digest(&digest).map(|p| p.name),
            Some("ops".to_string())
        );
        assert_eq!(
            t.find(b"abc").map(|t| t.name.as_str()),
            Some("enqueue-token-1")
        );
        assert_eq!(t.find(b"xyz").map(|t| t.name.as_str()), Some("ops"));
        assert!(t.find(b"nope").is_none());
        for bad in ["", "root:x", "admin", "admin:", "enqueue:a,,admin:b"] {
            assert!(Tokens::parse(bad).is_err(), "{bad}");
        }
    }
}
