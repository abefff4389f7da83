//! Integration tests: the real server on port 0, real HTTP to a fake upstream that speaks
//! OpenAI's protocol, SQLite always and PostgreSQL when `TEST_DATABASE_URL` is set.

mod fakes;
mod helpers;

mod account;
mod admin;
mod auth;
mod billing;
mod chat;
mod cluster;
mod crash;
mod creation_publish;
mod endings;
mod features;
mod hardening;
mod ledger;
mod limits;
mod media;
mod ops;
mod properties;
mod providers;
mod publishing;
mod registry;
mod routing;
mod schedule;
mod streaming;
mod studio;
mod videos;
