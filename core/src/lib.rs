//! The chat domain, without I/O: shared by the gateway and the Lambda
//! functions, so neither restates a rule the other relies on.
//!
//! - [`envelope`]: the versioned event every process publishes to and reads
//!   from the bus, with its routing attributes;
//! - [`conversation`]: kinds, roles and who may change whom;
//! - [`external`]: members on external channels (`whatsapp:+55...`);
//! - [`limits`]: the input rules (ids, bodies) of every entry point;
//! - [`send`]: a checked send, its acceptance and its bus event;
//! - [`store`]: domain types, receipt and status rules, and the narrow
//!   store traits ([`store::Sequencer`], [`store::Membership`], ...);
//! - [`memory`]: every store trait in process memory (embedded mode);
//! - [`bus`]: the publishing side of the bus;
//! - [`clock`]: time as the platform records it.
//!
//! Nothing here speaks protobuf (the gateway's edge does) or AWS
//! (`chat-aws` does).

pub mod bus;
pub mod clock;
pub mod conversation;
pub mod envelope;
pub mod external;
pub mod limits;
pub mod memory;
pub mod send;
pub mod store;
