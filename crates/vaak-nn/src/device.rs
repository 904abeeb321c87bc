//! Device names (`cpu`, `cuda:N`, `metal:N`) to a candle [`Device`].
//!
//! Lives here, the lowest crate with candle, so every command and library parses a device
//! string the same way, once, and passes the [`Device`] on.

use candle_core::Device;

/// The device spellings [`parse_device`] accepts, for messages.
pub const DEVICE_FORMS: &str = "cpu, cuda[:N], metal[:N]";

/// Why a device string did not give a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device '{spec}' is not one of {DEVICE_FORMS}")]
    UnknownKind { spec: String },
    #[error("device '{spec}': '{index}' is not a device index (valid forms: {DEVICE_FORMS})")]
    BadIndex { spec: String, index: String },
    /// The name is valid but the device could not be opened (no such GPU, or a build
    /// without the `cuda`/`metal` feature).
    #[error("device '{spec}': {source}")]
    Unavailable {
        spec: String,
        #[source]
        source: candle_core::Error,
    },
}

/// Parses `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N` (surrounding spaces ignored) and opens
/// the device.
pub fn parse_device(s: &str) -> Result<Device, DeviceError> {
    let spec = s.trim();
    let (kind, idx) = match spec.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>().map_err(|_| DeviceError::BadIndex {
                spec: spec.to_string(),
                index: i.to_string(),
            })?,
        ),
        None => (spec, 0),
    };
    let unavailable = |source| DeviceError::Unavailable {
        spec: spec.to_string(),
        source,
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(idx).map_err(unavailable),
        "metal" => Device::new_metal(idx).map_err(unavailable),
        _ => Err(DeviceError::UnknownKind {
            spec: spec.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_bad_ones_are_named() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        let e = parse_device("tpu:0").err().unwrap().to_string();
        assert!(e.contains("tpu:0"), "{e}");
        let e = parse_device("cuda:x").err().unwrap().to_string();
        assert!(e.contains("'x'"), "{e}");
    }

    #[test]
    fn errors_list_the_valid_forms() {
        let e = parse_device("gpu").err().unwrap();
        assert!(matches!(e, DeviceError::UnknownKind { .. }));
        assert!(e.to_string().contains("cpu, cuda[:N], metal[:N]"), "{e}");
        assert!(matches!(parse_device(" cpu "), Ok(Device::Cpu)));
    }
}
