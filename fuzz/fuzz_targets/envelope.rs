//! The request envelope as the HTTP handler reads it (UTF-8, then `CdsRequest`), and when it
//! parses, the whole evaluation of `offramp evaluate` / POST /cds-services/{id}.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offramp::hooks::{EvalOptions, HookError, Outcome, evaluate_request_with, needs_record};
use offramp::protocol::{CdsRequest, CdsResponse, Summary};
use offramp_fuzz::{catalogue, kb, today};
use std::collections::HashSet;

const CALENDAR: &str = "http://x/calendar";

fuzz_target!(|data: &[u8]| {
    // As src/http/mod.rs `parse`.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(req) = serde_json::from_str::<CdsRequest<'_>>(text) else {
        return;
    };
    let (kb, catalogue) = (kb(), catalogue());
    let service = format!("offramp-{}", req.hook);
    let opts = EvalOptions {
        calendar_url: Some(CALENDAR),
        partial: None,
    };
    let needs = needs_record(kb, catalogue, &service, &req);
    let out = evaluate_request_with(kb, catalogue, &service, &req, today(), opts);
    match (&needs, &out) {
        // needs_record gives the errors evaluate would give (the handler calls it first).
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Err(e), Ok(_)) => panic!("needs_record refused ({e}) what evaluate accepts"),
        (Ok(_), Err(HookError::DataUnavailable)) => {}
        (Ok(_), Err(e)) => panic!("evaluate refused ({e}) what needs_record accepted"),
        (Ok(_), Ok(_)) => {}
    }
    if let Ok(out) = out {
        check(&out);
        // A retried call gets the same response (same card and suggestion uuids).
        let again = evaluate_request_with(kb, catalogue, &service, &req, today(), opts)
            .expect("second evaluation");
        assert_eq!(out.response, again.response, "same request, same response");
    }
});

fn check(out: &Outcome) {
    let cards = &out.response.cards;
    assert_eq!(out.shown.len(), cards.len(), "one Shown per card");
    let mut uuids = HashSet::new();
    for c in cards {
        assert!(
            c.summary.as_str().chars().count() <= Summary::MAX_CHARS,
            "summary over 140 characters"
        );
        assert!(uuid::Uuid::parse_str(&c.uuid).is_ok(), "card uuid");
        assert!(uuids.insert(c.uuid.as_str()), "card uuid repeated");
        if !c.suggestions.is_empty() {
            assert!(
                c.selection_behavior.is_some(),
                "selectionBehavior is required with suggestions"
            );
        }
        for s in &c.suggestions {
            assert!(uuid::Uuid::parse_str(&s.uuid).is_ok(), "suggestion uuid");
            assert!(uuids.insert(s.uuid.as_str()), "suggestion uuid repeated");
        }
        for o in &c.override_reasons {
            assert!(offramp::cards::OVERRIDE_CODES.contains(&o.code.as_str()));
        }
        if c.links.iter().any(|l| l.url == CALENDAR) {
            assert!(
                out.calendar_html.is_some(),
                "a card links to a calendar the outcome does not carry"
            );
        }
    }
    // The response goes out as JSON, and a client reading it back gets the same cards.
    let json = serde_json::to_string(&out.response).expect("response serialises");
    let back: CdsResponse = serde_json::from_str(&json).expect("response reads back");
    assert_eq!(back, out.response, "response round-trips");
}
