//! The message's raw bytes through the host (the contract's `raw` interface), for filters that
//! must see exactly what is relayed. Natively (unit tests), `testing` sets them.

/// The header section as given at `on_headers`, byte for byte (empty before it).
#[cfg(target_arch = "wasm32")]
pub fn header_section() -> Vec<u8> {
    crate::bindings::sluice::filter::raw::header_section()
}

#[cfg(not(target_arch = "wasm32"))]
pub fn header_section() -> Vec<u8> {
    HEADER_SECTION.with(|raw| raw.borrow().clone())
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    pub(crate) static HEADER_SECTION: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
