//! A deliberate lint (clippy::ptr_arg): CI expects this crate NOT to build.

pub fn length(items: &Vec<u8>) -> usize {
    items.len()
}
