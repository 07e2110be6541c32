//! Shared test helpers: the cached real artefacts, temp dirs, and running commands.
#![allow(dead_code)]
