//! offramp: a CDS Hooks service that measures benzodiazepine / Z-drug exposure and opioid
//! co-prescription risk from the EHR's own data.
//!
//! `clinical` is the pure core (knowledge base, medication resolution, dose, exposure); the
//! service layers of ../shared/docs/architecture.md (http, auth, hooks, fhir, store) build on it.

pub mod audit;
pub mod auth;
pub mod cards;
pub mod clinical;
pub mod config;
pub mod fhir;
pub mod hooks;
pub mod http;
pub mod knowledge_files;
pub mod plans;
pub mod protocol;
pub mod rules;
pub mod store;
