//! Helpers for end-to-end tests: start and stop the external processes they need.
