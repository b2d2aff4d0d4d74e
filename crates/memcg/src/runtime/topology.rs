//! Temporary topology detection (replaced by the sysfs reader).
use crate::engine::Topology;
pub(crate) fn detect() -> Topology {
    // SAFETY: NUL-terminated name.
    let v = unsafe { libc::getenv(c"MEMCG_TOPOLOGY".as_ptr()) };
    if !v.is_null() {
        // SAFETY: getenv returns a NUL-terminated string.
        if let Ok(s) = unsafe { std::ffi::CStr::from_ptr(v) }.to_str() {
            if let Ok(t) = Topology::from_spec(s) {
                return t;
            }
        }
    }
    Topology::single_node(nr_possible_cpus()).unwrap_or_else(|_| std::process::abort())
}
pub(crate) fn nr_possible_cpus() -> usize {
    // SAFETY: sysconf has no memory arguments.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    if n < 1 {
        1
    } else {
        n as usize
    }
}
