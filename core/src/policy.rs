//! Who may do what on a topic: roles and topic policies, decided from the
//! claims of a verified JWT, without I/O.
//!
//! Supabase authorizes private channels with row-level-security policies
//! over `realtime.messages`; Chorus keeps the same idea in the node's config
//! (`[[auth.policies]]` in lunatic.toml), as patterns over the topic whose
//! captures are matched against claims:
//!
//! ```toml
//! [[auth.policies]]
//! name = "room host plays"          # named in every refusal it makes
//! topic = "room:{id}:audio"         # {id} captures one `:`-separated segment
//! actions = ["send"]
//! claims = { room_host = "{id}" }   # claim equals, or (a list) contains, the capture
//!
//! [[auth.policies]]
//! name = "room members"
//! topic = "room:{id}:*"             # `*` is any one segment, `**` (last) the rest
//! actions = ["join", "send", "track"]
//! claims = { rooms = "{id}" }
//! ```
//!
//! Rules, in order:
//! * The topic is matched without its `realtime:` prefix, so a raw client
//!   joining `room:1:chat` meets the same policies as realtime-js joining
//!   `realtime:room:1:chat`.
//! * A token whose `role` is `service_role` may do anything (Supabase's
//!   service key bypasses policies).
//! * Otherwise the **first** policy (in file order) whose pattern matches the
//!   topic and whose `actions` list the action decides: allowed when every
//!   claim it names matches, refused (naming the policy and the claim)
//!   otherwise. Put narrow policies before broad ones.
//! * No such policy: refused (default deny).
//!
//! A topic is *private* when a join asks for it (`config.private: true`) or
//! when any policy's pattern matches it (whatever its actions): a policy
//! that covers a topic makes it private for every client, so leaving out
//! `private: true` does not get around it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `role` of Supabase's service key: it may do anything.
pub const SERVICE_ROLE: &str = "service_role";

/// What a client does on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `phx_join`.
    Join,
    /// A broadcast push.
    Send,
    /// A presence `track`.
    Track,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Join, Action::Send, Action::Track];

    pub fn name(self) -> &'static str {
        match self {
            Action::Join => "join",
            Action::Send => "send",
            Action::Track => "track",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `[[auth.policies]]` entry as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Named in refusals and logs.
    pub name: String,
    /// Pattern over the topic (without `realtime:`): `:`-separated segments,
    /// each a literal, `{capture}`, `*` (any one segment) or, last, `**`
    /// (one or more segments).
    pub topic: String,
    /// Among `join`, `send`, `track`.
    pub actions: Vec<String>,
    /// Claim name → required value: a literal, or text with `{capture}`s.
    /// A string claim must equal it, a list claim contain it; numbers and
    /// booleans compare by their JSON text.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(String),
    Any,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy {
    name: String,
    pattern: Vec<Segment>,
    actions: Vec<Action>,
    claims: Vec<(String, String)>,
}

/// The compiled policies of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    policies: Vec<Policy>,
}

/// Why a client was refused; its Display text is the reply's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The policy that refused, `None` for the default deny.
    pub policy: Option<String>,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A topic without its Supabase `realtime:` prefix.
pub fn bare_topic(topic: &str) -> &str {
    topic.strip_prefix("realtime:").unwrap_or(topic)
}

/// Whether the claims carry `role: service_role`.
pub fn is_service_role(claims: &Map<String, Value>) -> bool {
    claims.get("role").and_then(Value::as_str) == Some(SERVICE_ROLE)
}

/// The reason an admin route refuses a token that is not the service key.
pub fn needs_service_role(what: &str, claims: &Map<String, Value>) -> Result<(), String> {
    if is_service_role(claims) {
        return Ok(());
    }
    let role = match claims.get("role") {
        Some(Value::String(r)) => format!("role {r:?}"),
        _ => "no role".to_string(),
    };
    Err(format!(
        "forbidden: {what} needs a token with role {SERVICE_ROLE:?} (this token has {role})"
    ))
}

impl Policies {
    /// Compiles the config's policies; the error names the entry
    /// (`auth.policies[2].topic: …`).
    pub fn compile(configs: &[PolicyConfig]) -> Result<Policies, String> {
        let policies = configs
            .iter()
            .enumerate()
            .map(|(i, c)| compile_one(c).map_err(|e| format!("auth.policies[{i}].{e}")))
            .collect::<Result<_, _>>()?;
        Ok(Policies { policies })
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether a policy covers `topic`, which makes it private.
    pub fn covers(&self, topic: &str) -> bool {
        let topic = bare_topic(topic);
        self.policies
            .iter()
            .any(|p| captures(&p.pattern, topic).is_some())
    }

    /// Decides `action` on `topic` for a client with `claims`: the name of
    /// the allowing policy (or `service_role`), or the refusal.
    pub fn decide(
        &self,
        topic: &str,
        action: Action,
        claims: &Map<String, Value>,
    ) -> Result<String, Refusal> {
        if is_service_role(claims) {
            return Ok(SERVICE_ROLE.to_string());
        }
        let bare = bare_topic(topic);
        for p in self.policies.iter().filter(|p| p.actions.contains(&action)) {
            let Some(caps) = captures(&p.pattern, bare) else {
                continue;
            };
            for (claim, template) in &p.claims {
                let want = expand(template, &caps);
                if !claim_matches(claims.get(claim), &want) {
                    return Err(Refusal {
                        policy: Some(p.name.clone()),
                        reason: format!(
                            "unauthorized: policy {:?} refused {action} on {bare}: claim {claim:?} must be or contain {want:?}",
                            p.name
                        ),
                    });
                }
            }
            return Ok(p.name.clone());
        }
        Err(Refusal {
            policy: None,
            reason: format!(
                "unauthorized: no policy allows {action} on private topic {bare} (private topics are denied by default; see auth.policies)"
            ),
        })
    }
}

fn compile_one(c: &PolicyConfig) -> Result<Policy, String> {
    if c.name.trim().is_empty() {
        return Err("name: must not be empty".into());
    }
    if c.topic.is_empty() {
        return Err("topic: must not be empty".into());
    }
    let parts: Vec<&str> = c.topic.split(':').collect();
    let mut pattern = Vec::with_capacity(parts.len());
    let mut names: Vec<String> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let seg = match *part {
            "" => return Err(format!("topic: {:?} has an empty segment", c.topic)),
            "*" => Segment::Any,
            "**" if i + 1 == parts.len() => Segment::Rest,
            "**" => return Err(format!("topic: {:?}: ** must be the last segment", c.topic)),
            p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                let name = &p[1..p.len() - 1];
                if !name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                    return Err(format!(
                        "topic: capture {{{name}}} must be letters, digits or _"
                    ));
                }
                if names.iter().any(|n| n == name) {
                    return Err(format!("topic: capture {{{name}}} appears twice"));
                }
                names.push(name.to_string());
                Segment::Capture(name.to_string())
            }
            p if p.contains(['{', '}', '*']) => {
                return Err(format!(
                    "topic: segment {p:?} mixes text with {{, }} or * (a segment is a literal, {{name}}, * or **)"
                ))
            }
            p => Segment::Literal(p.to_string()),
        };
        pattern.push(seg);
    }
    if c.actions.is_empty() {
        return Err("actions: list at least one of join, send, track".into());
    }
    let actions = c
        .actions
        .iter()
        .map(|a| {
            Action::parse(a).ok_or_else(|| format!("actions: {a:?} is not join, send or track"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut claims = Vec::with_capacity(c.claims.len());
    for (claim, template) in &c.claims {
        for used in template_captures(template).map_err(|e| format!("claims.{claim}: {e}"))? {
            if !names.contains(&used) {
                return Err(format!(
                    "claims.{claim}: {{{used}}} is not captured by topic {:?}",
                    c.topic
                ));
            }
        }
        claims.push((claim.clone(), template.clone()));
    }
    Ok(Policy {
        name: c.name.clone(),
        pattern,
        actions,
        claims,
    })
}

/// The capture names a claim template uses.
fn template_captures(template: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{template:?} has an unclosed {{"))?;
        out.push(after[..close].to_string());
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("{template:?} has an unmatched }}"));
    }
    Ok(out)
}

/// Matches a topic against a pattern: `(capture name, value)` pairs, or
/// `None` when it does not match.
fn captures<'p, 't>(pattern: &'p [Segment], topic: &'t str) -> Option<Vec<(&'p str, &'t str)>> {
    let mut caps = Vec::new();
    let mut parts = topic.split(':');
    for seg in pattern {
        if *seg == Segment::Rest {
            // One or more remaining segments, none empty.
            let mut rest = parts.by_ref().peekable();
            rest.peek()?;
            return rest.all(|p| !p.is_empty()).then_some(caps);
        }
        let part = parts.next().filter(|p| !p.is_empty())?;
        match seg {
            Segment::Literal(l) if l != part => return None,
            Segment::Capture(name) => caps.push((name.as_str(), part)),
            _ => {}
        }
    }
    parts.next().is_none().then_some(caps)
}

/// Replaces each `{name}` of a template with its captured value (the
/// template's names were checked against the pattern at compile time).
fn expand(template: &str, caps: &[(&str, &str)]) -> String {
    // One pass, so a captured value that looks like `{name}` stays text.
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        match caps.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => out.push_str(value),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether a claim value satisfies a required value.
fn claim_matches(claim: Option<&Value>, want: &str) -> bool {
    let scalar = |v: &Value| match v {
        Value::String(s) => s == want,
        Value::Number(n) => want.parse::<serde_json::Number>().ok().as_ref() == Some(n),
        Value::Bool(b) => want == if *b { "true" } else { "false" },
        _ => false,
    };
    match claim {
        Some(Value::Array(items)) => items.iter().any(scalar),
        Some(v) => scalar(v),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, topic: &str, actions: &[&str], claims: &[(&str, &str)]) -> PolicyConfig {
        PolicyConfig {
            name: name.into(),
            topic: topic.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The WhatsSound room policies the docs show.
    fn rooms() -> Policies {
        Policies::compile(&[
            policy(
                "room host plays",
                "room:{id}:audio",
                &["send"],
                &[("room_host", "{id}")],
            ),
            policy(
                "room members",
                "room:{id}:*",
                &["join", "send", "track"],
                &[("rooms", "{id}")],
            ),
        ])
        .unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_member_joins_and_chats_in_rooms_listed_in_its_claim() {
        let p = rooms();
        let c = claims(json!({"sub": "ana", "rooms": ["42", "7"]}));
        for topic in ["realtime:room:42:chat", "room:42:chat", "room:7:reactions"] {
            assert_eq!(
                p.decide(topic, Action::Join, &c).as_deref(),
                Ok("room members")
            );
            assert_eq!(
                p.decide(topic, Action::Send, &c).as_deref(),
                Ok("room members")
            );
            assert_eq!(
                p.decide(topic, Action::Track, &c).as_deref(),
                Ok("room members")
            );
        }
        assert_eq!(
            p.decide("room:42:audio", Action::Join, &c).as_deref(),
            Ok("room members")
        );
    }

    #[test]
    fn a_refusal_names_the_policy_and_the_claim() {
        let p = rooms();
        let c = claims(json!({"sub": "mallory", "rooms": ["7"]}));
        let r = p
            .decide("realtime:room:42:chat", Action::Join, &c)
            .unwrap_err();
        assert_eq!(r.policy.as_deref(), Some("room members"));
        assert!(r.reason.contains("\"room members\""), "{r}");
        assert!(
            r.reason.contains("\"rooms\"") && r.reason.contains("\"42\""),
            "{r}"
        );
        assert!(r.reason.contains("join on room:42:chat"), "{r}");
    }

    #[test]
    fn the_first_matching_policy_decides_so_only_the_host_sends_on_audio() {
        let p = rooms();
        let member = claims(json!({"rooms": ["42"]}));
        let r = p
            .decide("room:42:audio", Action::Send, &member)
            .unwrap_err();
        assert_eq!(r.policy.as_deref(), Some("room host plays"));
        let host = claims(json!({"rooms": ["42"], "room_host": ["42"]}));
        assert_eq!(
            p.decide("room:42:audio", Action::Send, &host).as_deref(),
            Ok("room host plays")
        );
        // The host of another room is not the host here.
        let other = claims(json!({"room_host": "43"}));
        assert!(p.decide("room:42:audio", Action::Send, &other).is_err());
    }

    #[test]
    fn private_topics_no_policy_covers_are_denied_by_default() {
        let p = rooms();
        let c = claims(json!({"rooms": ["42"]}));
        let r = p.decide("realtime:lobby", Action::Join, &c).unwrap_err();
        assert_eq!(r.policy, None);
        assert!(r.reason.contains("denied by default"), "{r}");
        assert!(Policies::default().decide("x", Action::Join, &c).is_err());
    }

    #[test]
    fn service_role_may_do_anything() {
        let c = claims(json!({"role": "service_role"}));
        assert_eq!(
            Policies::default()
                .decide("room:1:audio", Action::Send, &c)
                .as_deref(),
            Ok(SERVICE_ROLE)
        );
        assert!(is_service_role(&c));
        assert!(!is_service_role(&claims(json!({"role": "anon"}))));
        assert!(needs_service_role("PUT /rooms", &c).is_ok());
        let e = needs_service_role("PUT /rooms", &claims(json!({"role": "anon"}))).unwrap_err();
        assert!(e.contains("service_role") && e.contains("\"anon\""), "{e}");
        let e = needs_service_role("PUT /rooms", &claims(json!({}))).unwrap_err();
        assert!(e.contains("no role"), "{e}");
    }

    #[test]
    fn patterns_match_whole_segments() {
        let p = rooms();
        assert!(p.covers("realtime:room:1:chat"));
        assert!(p.covers("room:1:anything"));
        assert!(!p.covers("room:1"), "* needs a segment");
        assert!(!p.covers("room:1:chat:extra"), "* is one segment");
        assert!(!p.covers("room::chat"), "empty capture");
        assert!(!p.covers("rooms:1:chat"));
        assert!(!p.covers("lobby"));
        let rest =
            Policies::compile(&[policy("all", "team:{t}:**", &["join"], &[("team", "{t}")])])
                .unwrap();
        assert!(rest.covers("team:a:b"));
        assert!(rest.covers("team:a:b:c:d"));
        assert!(!rest.covers("team:a"));
        assert!(!rest.covers("team:a:b::c"));
    }

    #[test]
    fn claims_compare_as_text_and_lists_contain() {
        let p = Policies::compile(&[policy(
            "n",
            "t:{id}",
            &["join"],
            &[("n", "{id}"), ("role", "authenticated")],
        )])
        .unwrap();
        let ok = claims(json!({"n": 5, "role": "authenticated"}));
        assert!(p.decide("t:5", Action::Join, &ok).is_ok());
        assert!(p.decide("t:6", Action::Join, &ok).is_err());
        let list = claims(json!({"n": [1, 5], "role": "authenticated"}));
        assert!(p.decide("t:5", Action::Join, &list).is_ok());
        let anon = claims(json!({"n": 5, "role": "anon"}));
        assert!(p.decide("t:5", Action::Join, &anon).is_err());
        assert!(p
            .decide(
                "t:5",
                Action::Join,
                &claims(json!({"role": "authenticated"}))
            )
            .is_err());
        let obj = claims(json!({"n": {"5": true}, "role": "authenticated"}));
        assert!(p.decide("t:5", Action::Join, &obj).is_err());
    }

    #[test]
    fn a_captured_value_is_never_read_as_a_template() {
        let p = Policies::compile(&[policy(
            "pair",
            "dm:{a}:{b}",
            &["join"],
            &[("pair", "{a}/{b}")],
        )])
        .unwrap();
        let c = claims(json!({"pair": "{b}/x"}));
        assert!(p.decide("dm:{b}:x", Action::Join, &c).is_ok());
        let c = claims(json!({"pair": "x/x"}));
        assert!(p.decide("dm:{b}:x", Action::Join, &c).is_err());
    }

    #[test]
    fn bad_policies_are_refused_naming_the_entry_and_field() {
        for (bad, needle) in [
            (policy("", "a", &["join"], &[]), "auth.policies[0].name"),
            (policy("p", "", &["join"], &[]), "auth.policies[0].topic"),
            (policy("p", "a::b", &["join"], &[]), "empty segment"),
            (policy("p", "**:a", &["join"], &[]), "last segment"),
            (policy("p", "a{x}", &["join"], &[]), "mixes text"),
            (policy("p", "a:{x}:{x}", &["join"], &[]), "appears twice"),
            (policy("p", "a:{x-y}", &["join"], &[]), "letters, digits"),
            (policy("p", "a", &[], &[]), "auth.policies[0].actions"),
            (policy("p", "a", &["publish"], &[]), "\"publish\""),
            (policy("p", "a:{x}", &["join"], &[("c", "{y}")]), "claims.c"),
            (policy("p", "a:{x}", &["join"], &[("c", "{x")]), "unclosed"),
            (policy("p", "a:{x}", &["join"], &[("c", "x}")]), "unmatched"),
        ] {
            let e = Policies::compile(std::slice::from_ref(&bad)).unwrap_err();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
        let e = Policies::compile(&[
            policy("ok", "a", &["join"], &[]),
            policy("p", "", &["join"], &[]),
        ])
        .unwrap_err();
        assert!(e.starts_with("auth.policies[1]."), "{e}");
    }

    #[test]
    fn a_policy_without_claims_allows_every_token() {
        let p = Policies::compile(&[policy("open", "lobby:*", &["join"], &[])]).unwrap();
        assert!(p
            .decide("lobby:a", Action::Join, &claims(json!({})))
            .is_ok());
        assert!(p
            .decide("lobby:a", Action::Send, &claims(json!({})))
            .is_err());
    }
}
