//! Choosing where the model runs, at run time.

use std::str::FromStr;

use tch::Device;

use crate::error::GlowError;

/// A device request: `auto` (CUDA when there is one, else the CPU), `cpu`,
/// `cuda` or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = GlowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    GlowError::Config(format!(
                        "unknown device `{s}`: use auto, cpu, cuda or cuda:N"
                    ))
                }),
        }
    }
}

impl DeviceChoice {
    /// Resolves the request; asking for CUDA where there is none is an error.
    pub fn resolve(self) -> Result<Device, GlowError> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(i) if i < tch::Cuda::device_count() as usize => Ok(Device::Cuda(i)),
            DeviceChoice::Cuda(i) => Err(GlowError::Config(format!(
                "CUDA device {i} requested but {} CUDA device(s) are visible",
                tch::Cuda::device_count()
            ))),
        }
    }
}

/// Sets the number of CPU threads libtorch uses (0 keeps its default).
pub fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// A one-line description of a device for logs and reports.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
