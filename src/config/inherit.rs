//! Per-pool sections that inherit the top-level ones: before typed deserialisation, each
//! `[[pool]]`'s `affinity`, `health`, `balance` and `replication` tables get the top-level section's keys
//! they do not set themselves. Values keep the spans of where they were written, so an error
//! in an inherited value points at the top-level line an operator has to edit. The affinity
//! cookie name is not inherited: each pool has its own (`stickyd_<name>` by default).

use std::borrow::Cow;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The sections a pool inherits, and the keys of each it never inherits.
const SECTIONS: [(&str, &[&str]); 4] = [
    ("affinity", &["cookie"]),
    ("health", &[]),
    ("balance", &[]),
    ("replication", &[]),
];

fn key(name: &'static str) -> Spanned<Cow<'static, str>> {
    Spanned::new(0..0, Cow::Borrowed(name))
}

/// Fills every pool's sections from the top-level ones (see the module documentation).
/// Anything that is not shaped as expected is left alone: typed deserialisation reports it.
pub(super) fn pool_sections(doc: &mut DeTable<'_>) {
    for (section, never) in SECTIONS {
        let top = match doc.get(&key(section)).map(Spanned::get_ref) {
            Some(DeValue::Table(t)) => t.clone(),
            _ => continue,
        };
        let Some(pools) = doc.get_mut(&key("pool")) else {
            return;
        };
        let DeValue::Array(pools) = pools.get_mut() else {
            return;
        };
        for pool in pools.iter_mut() {
            let span = pool.span();
            let DeValue::Table(pool) = pool.get_mut() else {
                continue;
            };
            let own = pool
                .entry(key(section))
                .or_insert_with(|| Spanned::new(span, DeValue::Table(DeTable::new())));
            let DeValue::Table(own) = own.get_mut() else {
                continue;
            };
            for (k, v) in &top {
                if !never.contains(&k.get_ref().as_ref()) && !own.contains_key(k) {
                    own.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section<'a, 'i>(doc: &'a DeTable<'i>, path: &[&'static str]) -> &'a DeTable<'i> {
        let mut t = doc;
        for (i, p) in path.iter().enumerate() {
            let v = if *p == "0" {
                match t.get(&key("pool")).map(Spanned::get_ref) {
                    Some(DeValue::Array(a)) => a[0].get_ref(),
                    _ => panic!("no pools"),
                }
            } else {
                t.get(&key(p))
                    .unwrap_or_else(|| panic!("no {p} at {i}"))
                    .get_ref()
            };
            let DeValue::Table(next) = v else {
                panic!("{p} is not a table")
            };
            t = next;
        }
        t
    }

    #[test]
    fn pools_inherit_top_level_keys_they_do_not_set_with_their_spans() {
        let text = "[affinity]\nmode = \"cookie\"\ncookie = \"top\"\nmax_idle = \"1h\"\n\
                    [health]\npath = \"/up\"\n\
                    [[pool]]\nname = \"shop\"\n[pool.affinity]\nmax_idle = \"5m\"\n";
        let mut doc = DeTable::parse(text).unwrap().into_inner();
        pool_sections(&mut doc);
        let aff = section(&doc, &["0", "affinity"]);
        let at = |t: &DeTable<'_>, k: &'static str| t.get(&key(k)).map(|v| v.span());
        let top_mode = text.find("\"cookie\"").unwrap();
        assert_eq!(
            at(aff, "mode").map(|s| s.start),
            Some(top_mode),
            "inherited, top-level span"
        );
        let own = text.find("\"5m\"").unwrap();
        assert_eq!(
            at(aff, "max_idle").map(|s| s.start),
            Some(own),
            "its own wins"
        );
        assert_eq!(
            at(aff, "cookie"),
            None,
            "the cookie name is never inherited"
        );
        let health = section(&doc, &["0", "health"]);
        assert_eq!(
            at(health, "path").map(|s| s.start),
            Some(text.find("\"/up\"").unwrap())
        );
    }
}
