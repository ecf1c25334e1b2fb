//! Where the model runs: `--device auto|cpu|cuda[:N]`. Auto takes CUDA when this build has
//! its kernels, the driver loads and the device exists, and otherwise the CPU, saying why.

use super::cuda::Gpu;
use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!(
                    "'{s}' is not a device: expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The device a command runs on.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<Gpu>),
}

impl Device {
    /// Opens the device `choice` names. Returns it with the one line that says which it is
    /// and, for auto falling back to the CPU, why; asking for CUDA where it cannot run is an
    /// error that says why.
    pub fn select(choice: DeviceChoice) -> Result<(Device, String)> {
        match choice {
            DeviceChoice::Cpu => Ok((Device::Cpu, "device: cpu".to_string())),
            DeviceChoice::Auto => match Gpu::open(0) {
                Ok(gpu) => {
                    let line = format!("device: {} (auto)", gpu.describe());
                    Ok((Device::Cuda(Arc::new(gpu)), line))
                }
                Err(why) => Ok((Device::Cpu, format!("device: cpu (auto: {why})"))),
            },
            DeviceChoice::Cuda(n) => match Gpu::open(n) {
                Ok(gpu) => {
                    let line = format!("device: {}", gpu.describe());
                    Ok((Device::Cuda(Arc::new(gpu)), line))
                }
                Err(why) => bail!("--device cuda:{n}: CUDA cannot run here: {why}"),
            },
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(gpu) => write!(f, "{}", gpu.describe()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (s, want) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceChoice>(), Ok(want));
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", ""] {
            let err = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(err.contains("expected auto, cpu, cuda or cuda:N"), "{err}");
        }
    }

    #[test]
    fn cpu_is_always_there_and_auto_always_gives_a_device() {
        let (d, line) = Device::select(DeviceChoice::Cpu).unwrap();
        assert!(!d.is_cuda());
        assert_eq!(line, "device: cpu");
        // Auto never fails: CUDA where it runs, else the CPU with the reason.
        let (d, line) = Device::select(DeviceChoice::Auto).unwrap();
        match d {
            Device::Cpu => assert!(line.starts_with("device: cpu (auto: "), "{line}"),
            Device::Cuda(_) => assert!(line.starts_with("device: cuda:0"), "{line}"),
        }
    }

    #[test]
    fn asking_for_cuda_where_it_cannot_run_says_why() {
        // A device ordinal no machine has: always an error, with the reason.
        let err = Device::select(DeviceChoice::Cuda(4096)).expect_err("no machine has device 4096");
        let msg = err.to_string();
        assert!(
            msg.starts_with("--device cuda:4096: CUDA cannot run here: "),
            "{msg}"
        );
    }
}
