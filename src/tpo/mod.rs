//! Thought Preference Optimization: thought prompts and their parser, judges, length-controlled
//! pairing, the built-in task, and the iteration loop that ties them to generation and DPO.

pub mod alpaca;
pub mod config;
pub mod demo;
pub mod format;
pub mod json_files;
pub mod judge;
pub mod malformed;
pub mod markers;
pub mod pairing;
pub mod prompts;
pub mod report;
pub mod run;
pub mod stages;
pub mod summary;
pub mod task;
pub mod thought;
