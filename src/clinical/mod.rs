//! The pure clinical core: knowledge base, medication resolution, dose parsing and exposure.
//! No I/O and no clock: files arrive as text and `today` is an argument.

pub mod codes;
pub mod dose;
pub mod exposure;
pub mod fhir_read;
pub mod history;
pub mod json;
pub mod knowledge;
pub mod patient;
pub mod record;

pub use codes::{DiazepamMg, DrugClass, Mme, RxCui};
pub use exposure::{Exposure, ExposureParams, TrackKey, exposure};
pub use knowledge::{Knowledge, KnowledgeError};
pub use record::{MedicationIndex, MedicationRecord, read_record, resolve};
