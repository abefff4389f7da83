//! Publishing to social platforms (seed 000, seed 003, seed 004): the text rules every platform
//! counts by ([`text`]), social sets and drafts ([`drafts`]).

pub mod drafts;
pub mod text;
