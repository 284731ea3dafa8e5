//! Host calls, imported directly. The SDK's wrappers `panic!` on any status they do not expect
//! (a header map read in the wrong phase, a shared-data key the host refuses, a time the host
//! cannot give), and a panic kills the VM for every stream on the worker, so every call the plugin
//! makes goes through here and returns its status instead. The one exception is
//! `proxy_http_call`: the SDK must register each call's token to route its answer (its dispatcher
//! panics on an unknown token), so dispatches go through `proxy_wasm::hostcalls`, whose wrapper
//! only panics on statuses Envoy's `httpCall` never returns (it returns `Ok`, `BadArgument` or
//! `InternalFailure`).

#![allow(unsafe_code)]

/// Proxy-wasm status code; 0 is OK.
pub type Status = u32;

pub const OK: Status = 0;
pub const NOT_FOUND: Status = 1;
pub const EMPTY: Status = 7;
pub const CAS_MISMATCH: Status = 8;

pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const CALL_RESPONSE_HEADERS: u32 = 6;
pub const REQUEST_BODY: u32 = 0;
pub const RESPONSE_BODY: u32 = 1;
pub const CALL_RESPONSE_BODY: u32 = 4;
pub const PLUGIN_CONFIGURATION: u32 = 7;
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
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_call_foreign_function(
            function_name_data: *const u8,
            function_name_size: usize,
            arguments_data: *const u8,
            arguments_size: usize,
            results_data: *mut *mut u8,
            results_size: *mut usize,
        ) -> u32;
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_register_shared_queue(
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_enqueue_shared_queue(
            queue_id: u32,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
        pub fn proxy_dequeue_shared_queue(
            queue_id: u32,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
    }
}

/// Takes ownership of memory the host returned: it allocated it through the SDK's
/// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host filled a buffer it allocated with `proxy_on_memory_allocate(size)`, which
    // hands out a leaked `Box<[u8]>` of exactly `size` bytes: ownership passes to us here, once.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// All pairs of a header map (`REQUEST_HEADERS`, `RESPONSE_HEADERS`, `CALL_RESPONSE_HEADERS`).
/// Names that are not UTF-8 are skipped (Envoy only hands out valid header names).
pub fn header_map_pairs(map: u32) -> Result<Vec<(String, Vec<u8>)>, Status> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: out-pointers to live locals; the returned buffer is taken over by `owned`.
    let status = unsafe { ffi::proxy_get_header_map_pairs(map, &mut data, &mut size) };
    let bytes = owned(data, size);
    match status {
        OK => Ok(bytes.map(|b| deserialize_map(&b)).unwrap_or_default()),
        status => Err(status),
    }
}

/// Up to `max` bytes of a buffer from `start`; `Ok(None)` when there is no such buffer.
pub fn buffer(buffer: u32, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: as above.
    let status = unsafe { ffi::proxy_get_buffer_bytes(buffer, start, max, &mut data, &mut size) };
    let bytes = owned(data, size);
    match status {
        OK => Ok(bytes),
        NOT_FOUND => Ok(None),
        status => Err(status),
    }
}

/// A shared-data value and its CAS token; `Ok(None)` when the key does not exist.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    let mut cas = 0;
    // SAFETY: as above.
    let status = unsafe {
        ffi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
    };
    let bytes = owned(data, size);
    match status {
        OK => Ok(Some((bytes.unwrap_or_default(), cas))),
        NOT_FOUND => Ok(None),
        status => Err(status),
    }
}

/// Sets a shared-data key if its CAS token is still `cas` (0: unconditionally).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Status {
    // SAFETY: pointers and lengths come from live slices; the host copies them.
    unsafe { ffi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) }
}

pub fn current_time_nanos() -> Result<u64, Status> {
    let mut now = 0;
    // SAFETY: out-pointer to a live local.
    match unsafe { ffi::proxy_get_current_time_nanoseconds(&mut now) } {
        OK => Ok(now),
        status => Err(status),
    }
}

/// A property of the stream (`path` segments, e.g. dynamic metadata); `Ok(None)` when absent.
/// Leaf values (strings) come back as their bytes.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let joined = path.join("\0");
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: as above.
    let status =
        unsafe { ffi::proxy_get_property(joined.as_ptr(), joined.len(), &mut data, &mut size) };
    let bytes = owned(data, size);
    match status {
        OK => Ok(bytes),
        NOT_FOUND | EMPTY => Ok(None),
        status => Err(status),
    }
}

/// Sets a property of the stream (one path segment): Envoy keeps it as filter state
/// `wasm.<name>`, which its access log prints with `%FILTER_STATE(wasm.<name>:PLAIN)%`.
pub fn set_property(name: &str, value: &[u8]) -> Status {
    // SAFETY: pointers and lengths come from live slices; the host copies them.
    unsafe { ffi::proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) }
}

/// Calls a host extension by name; its result is dropped.
pub fn call_foreign_function(name: &str, arguments: &[u8]) -> Status {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: as above.
    let status = unsafe {
        ffi::proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut data,
            &mut size,
        )
    };
    drop(owned(data, size));
    status
}

/// Proxy-wasm log levels.
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;
pub const LOG_CRITICAL: u32 = 5;

pub fn log(level: u32, message: &str) -> Status {
    // SAFETY: as above.
    unsafe { ffi::proxy_log(level, message.as_ptr(), message.len()) }
}

pub fn set_tick_period(milliseconds: u32) -> Status {
    // SAFETY: no pointers.
    unsafe { ffi::proxy_set_tick_period_milliseconds(milliseconds) }
}

/// Makes the following host calls act on context `id` (a stream of this VM, or its root).
pub fn set_effective_context(id: u32) -> Status {
    // SAFETY: no pointers.
    unsafe { ffi::proxy_set_effective_context(id) }
}

/// Registers (or reopens) this VM's shared queue `name`; its messages reach the root context's
/// `on_queue_ready` on this VM's thread.
pub fn register_shared_queue(name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: pointer and length of a live slice; out-pointer to a live local.
    match unsafe { ffi::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) } {
        OK => Ok(id),
        status => Err(status),
    }
}

pub fn enqueue_shared_queue(id: u32, value: &[u8]) -> Status {
    // SAFETY: pointer and length of a live slice; the host copies it.
    unsafe { ffi::proxy_enqueue_shared_queue(id, value.as_ptr(), value.len()) }
}

/// The next message of a shared queue; `Ok(None)` when it is empty.
pub fn dequeue_shared_queue(id: u32) -> Result<Option<Vec<u8>>, Status> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: out-pointers to live locals; the returned buffer is taken over by `owned`.
    let status = unsafe { ffi::proxy_dequeue_shared_queue(id, &mut data, &mut size) };
    let bytes = owned(data, size);
    match status {
        OK => Ok(Some(bytes.unwrap_or_default())),
        EMPTY => Ok(None),
        status => Err(status),
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

/// Reads the proxy-wasm map encoding, checking every length: a malformed map yields the pairs
/// read before the problem.
fn deserialize_map(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        let n = u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]);
        usize::try_from(n).ok()
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let mut pairs = Vec::with_capacity(count.min(256));
    let Some(mut data) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return pairs;
    };
    for index in 0..count {
        let sizes = 4 + index * 8;
        let (Some(key_len), Some(value_len)) = (word(sizes), word(sizes + 4)) else {
            break;
        };
        let Some(key) = take(bytes, &mut data, key_len) else {
            break;
        };
        let Some(value) = take(bytes, &mut data, value_len) else {
            break;
        };
        if let Ok(name) = std::str::from_utf8(key) {
            pairs.push((name.to_owned(), value.to_vec()));
        }
    }
    pairs
}

/// `len` bytes at `*at`, then skips them and their NUL terminator.
fn take<'b>(bytes: &'b [u8], at: &mut usize, len: usize) -> Option<&'b [u8]> {
    let end = at.checked_add(len)?;
    let slice = bytes.get(*at..end)?;
    *at = end.checked_add(1)?;
    Some(slice)
}

/// Proxy-wasm metric types.
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;
pub const METRIC_HISTOGRAM: u32 = 2;

/// Defines (or finds: same name, same stat) a metric; its id.
pub fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: pointer and length of a live slice; out-pointer to a live local.
    match unsafe { ffi::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) } {
        OK => Ok(id),
        status => Err(status),
    }
}

pub fn increment_metric(id: u32, offset: i64) -> Status {
    // SAFETY: no pointers.
    unsafe { ffi::proxy_increment_metric(id, offset) }
}

/// Sets a gauge, or records a histogram sample.
pub fn record_metric(id: u32, value: u64) -> Status {
    // SAFETY: no pointers.
    unsafe { ffi::proxy_record_metric(id, value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_and_malformed_ones_do_not_panic() {
        let pairs: &[(&str, &[u8])] = &[(":method", b"POST"), ("x", b""), ("bin", &[0xff, 0])];
        let encoded = serialize_map(pairs);
        let decoded = deserialize_map(&encoded);
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0], (":method".to_string(), b"POST".to_vec()));
        assert_eq!(decoded[2].1, vec![0xff, 0]);
        for cut in 0..encoded.len() {
            assert!(deserialize_map(&encoded[..cut]).len() <= 3);
        }
        let mut huge = encoded.clone();
        huge[0] = 0xff;
        huge[3] = 0xff;
        assert!(deserialize_map(&huge).is_empty());
        assert!(deserialize_map(&[]).is_empty());
    }
}
