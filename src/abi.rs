//! Host calls that can fail on bad input or in the wrong phase. The SDK panics on such failures,
//! and a panic kills the VM for every stream on the worker, so these are imported here and their
//! status is returned instead.

#![allow(unsafe_code)]

/// Proxy-wasm status code; 0 is OK.
pub type Status = u32;

pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const REQUEST_BODY: u32 = 0;
pub const RESPONSE_BODY: u32 = 1;
pub const STREAM_REQUEST: u32 = 0;
pub const STREAM_RESPONSE: u32 = 1;

mod ffi {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer_type: u32,
            start: usize,
            size: usize,
            buffer_data: *const u8,
            buffer_size: usize,
        ) -> u32;
        pub fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_continue_stream(stream_type: u32) -> u32;
    }
}

pub fn replace_header(map: u32, name: &str, value: &[u8]) -> Status {
    // SAFETY: pointers and lengths come from live slices; the host copies them.
    unsafe {
        ffi::proxy_replace_header_map_value(
            map,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    }
}

pub fn remove_header(map: u32, name: &str) -> Status {
    // SAFETY: as above.
    unsafe { ffi::proxy_remove_header_map_value(map, name.as_ptr(), name.len()) }
}

pub fn set_buffer(buffer: u32, start: usize, size: usize, data: &[u8]) -> Status {
    // SAFETY: as above.
    unsafe { ffi::proxy_set_buffer_bytes(buffer, start, size, data.as_ptr(), data.len()) }
}

pub fn send_local_response(
    status: u16,
    headers: &[(&str, &[u8])],
    body: &[u8],
    details: &str,
) -> Status {
    let headers = serialize_map(headers);
    // SAFETY: as above.
    unsafe {
        ffi::proxy_send_local_response(
            u32::from(status),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    }
}

pub fn continue_stream(stream: u32) -> Status {
    // SAFETY: no pointers.
    unsafe { ffi::proxy_continue_stream(stream) }
}

/// The proxy-wasm map encoding: count, then (key size, value size) pairs, then NUL-terminated data.
fn serialize_map(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let data_len: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data_len);
    out.extend_from_slice(&u32_le(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&u32_le(k.len()));
        out.extend_from_slice(&u32_le(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

fn u32_le(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}
