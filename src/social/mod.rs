//! Publishing to social platforms (seed 000, seed 003, seed 004): the text rules every platform
//! counts by ([`text`]), drafts ([`drafts`]), connecting accounts through polled sessions
//! ([`connect`], [`oauth`], one client per platform in [`platforms`]) and keeping their tokens
//! alive ([`tokens`]).

pub mod article;
pub mod connect;
pub mod creation_publish;
pub mod drafts;
pub mod media;
pub mod oauth;
pub mod platforms;
pub mod publish;
pub mod schedule;
pub mod text;
pub mod tokens;
