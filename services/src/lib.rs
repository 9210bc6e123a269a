//! Mercator's domain: the services that decide, between the HTTP server (which translates) and the engine,
//! store and feature pipeline (which run models, keep data and compute features). Nothing here names an
//! HTTP type: each service is built once at start with the handles it needs, and answers with its own
//! error enum whose `code()` the server maps to a status in its one table.
//!
//! - [`predict`]: business predictions (price, forecast, anomalies, trend) on the organization's price
//!   history, through the active model versions, with shadow traffic mirrored on the way.
//! - [`shadow`]: the shadow versions' figures.
//! - [`alerts`]: alert rules indexed by scope, judged on every ingest and on a schedule, the events they
//!   open announced on the notification stream and to webhooks (the dispatcher, its egress guard).
//! - [`catalog`]: materials and suppliers, one generic for both, the prediction caches kept in step.
//! - [`clock`]: the time the domain judges by, which tests move forward.
//! - [`demo`]: the demo organization, loaded from the fixture the shipped models were trained on.
//! - [`events`]: price and notification streams, one channel per organization.
//! - [`fleet`]: replicas on one database kept in step through the store's change feed.
//! - [`identity`]: API keys made under the platform's policy (scopes, an end).
//! - [`ingest`]: price observations written, folded into the history, scored, judged and announced.
//! - [`jobs`]: batch predictions: one intake for every body, answered inline or run as a job (runner,
//!   janitor, progress, results).
//! - [`registry`]: the model registry: uploads validated before they serve, activation, rollback, traffic,
//!   load, unload, retire, imports; every change kept in the store and announced as a model event.
//! - [`limits`]: rate limits (GCRA) per key, user or client address by route class, in process or
//!   shared through Redis.
//! - [`monitor`]: model monitoring: live profiles of what each version sees and answers, merged across
//!   replicas, judged for drift against the version's reference profile.
//! - [`sourcing`]: RFQs to invited suppliers, their quotes benchmarked against the fair price as they
//!   arrive and scored, compared and awarded.
//! - [`supply`]: inventory policies (EOQ, safety stock, reorder point, order-up-to) for a service target.
//! - [`input`]: request bodies read by the API's rules (JSON naming the field at fault, CSV read as JSON).

pub mod alerts;
pub mod catalog;
pub mod clock;
pub mod demo;
pub mod events;
pub mod fleet;
pub mod identity;
pub mod ingest;
pub mod input;
pub mod jobs;
pub mod limits;
pub mod monitor;
pub mod predict;
pub mod registry;
pub mod shadow;
pub mod sourcing;
pub mod supply;
