//! Everything the platform does on AWS, in one owner shared by the gateway
//! and the Lambda functions:
//! - [`dynamo`]: the chat tables, their schema and [`dynamo::DynamoStore`]
//!   (every store trait of `chat-core`), and the connector's table;
//! - [`sns`]: publishing envelopes to the events topic;
//! - [`queue`]: a gateway's own SQS queue, subscription and heartbeat;
//! - [`lambda`]: a Lambda's SQS batch (decode each record, report only the
//!   failed ones);
//! - [`error`]: AWS SDK errors, described one way;
//! - [`metered`]: every request counted and timed, by service, operation
//!   and outcome.
//!
//! Configuration comes from the standard AWS environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...) through `aws-config`; nothing
//! here knows whether the endpoint is AWS or an emulator.

pub mod dynamo;
pub mod error;
pub mod lambda;
pub mod metered;
pub mod queue;
pub mod sns;
