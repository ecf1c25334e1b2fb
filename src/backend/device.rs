//! Where the model runs: `--device auto|cpu|cuda[:N]`. Auto takes CUDA when this build has
//! its kernels, the driver loads and the device exists, and otherwise the CPU, saying why.
//! And how: `--precision f32|bf16` (the CPU's default f32; CUDA runs bf16 only).

use super::cpu::bf16::Bf16Path;
use super::cpu::{Cpu, Products};
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

/// The arithmetic of the matrix products: f32, or bf16 operands with f32 sums (master
/// weights, norms, softmax, log-probs and the loss stay f32 either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("'{s}' is not a precision: expected f32 or bf16")),
        }
    }
}

/// Where and how a command asked to run: `--device` and `--precision` (None: the device's
/// default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub device: DeviceChoice,
    pub precision: Option<Precision>,
}

/// The device a command runs on.
#[derive(Clone)]
pub enum Device {
    /// The CPU, with its products as `--precision` asked.
    Cpu(Cpu),
    Cuda(Arc<Gpu>),
}

impl Device {
    /// The CPU, f32 throughout.
    pub const CPU: Device = Device::Cpu(Cpu::F32);

    /// Opens the device `placement` names. Returns it with the one line that says which it
    /// is, with what products, and, for auto falling back to the CPU, why; asking for CUDA
    /// where it cannot run, or for a precision the device lacks, is an error that says why.
    pub fn select(placement: Placement) -> Result<(Device, String)> {
        let precision = placement.precision;
        let (device, line) = match placement.device {
            DeviceChoice::Cpu => (Device::CPU, "device: cpu".to_string()),
            DeviceChoice::Auto => match Gpu::open(0) {
                Ok(gpu) => {
                    let line = format!("device: {} (auto)", gpu.describe());
                    (Device::Cuda(Arc::new(gpu)), line)
                }
                Err(why) => (Device::CPU, format!("device: cpu (auto: {why})")),
            },
            DeviceChoice::Cuda(n) => match Gpu::open(n) {
                Ok(gpu) => {
                    let line = format!("device: {}", gpu.describe());
                    (Device::Cuda(Arc::new(gpu)), line)
                }
                Err(why) => bail!("--device cuda:{n}: CUDA cannot run here: {why}"),
            },
        };
        match (device, precision) {
            (Device::Cpu(_), Some(Precision::Bf16)) => {
                let products = Products::Bf16(Bf16Path::chosen()?);
                Ok((
                    Device::Cpu(Cpu::new(products)),
                    format!("{line}; {products}"),
                ))
            }
            (Device::Cuda(_), Some(Precision::F32)) => bail!(
                "--precision f32 on CUDA: not available; CUDA runs bf16 weights and \
                 activations with f32 master weights (--precision bf16, its default)"
            ),
            (device, _) => Ok((device, line)),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Device::Cpu(cpu) => write!(f, "cpu ({})", cpu.products),
            Device::Cuda(gpu) => write!(f, "{}", gpu.describe()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(device: DeviceChoice, precision: Option<Precision>) -> Placement {
        Placement { device, precision }
    }

    #[test]
    fn bf16_on_the_cpu_names_its_kernel_and_f32_is_the_default() {
        let (d, line) =
            Device::select(placement(DeviceChoice::Cpu, Some(Precision::Bf16))).unwrap();
        let Device::Cpu(cpu) = d else {
            panic!("asked for the CPU")
        };
        let Products::Bf16(path) = cpu.products else {
            panic!("asked for bf16: {line}")
        };
        assert!(path.available());
        assert_eq!(line, format!("device: cpu; bf16 products on {path}"));
        let (d, _) = Device::select(placement(DeviceChoice::Cpu, Some(Precision::F32))).unwrap();
        assert!(matches!(d, Device::Cpu(cpu) if cpu == Cpu::F32));
        for bad in ["fp32", "BF16", "f16", ""] {
            let err = bad.parse::<Precision>().unwrap_err();
            assert!(err.contains("expected f32 or bf16"), "{err}");
        }
    }

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
        let (d, line) = Device::select(placement(DeviceChoice::Cpu, None)).unwrap();
        assert!(!d.is_cuda());
        assert_eq!(line, "device: cpu");
        // Auto never fails: CUDA where it runs, else the CPU with the reason.
        let (d, line) = Device::select(placement(DeviceChoice::Auto, None)).unwrap();
        match d {
            Device::Cpu(_) => assert!(line.starts_with("device: cpu (auto: "), "{line}"),
            Device::Cuda(_) => assert!(line.starts_with("device: cuda:0"), "{line}"),
        }
    }

    #[test]
    fn asking_for_cuda_where_it_cannot_run_says_why() {
        // A device ordinal no machine has: always an error, with the reason.
        let err = Device::select(placement(DeviceChoice::Cuda(4096), None))
            .expect_err("no machine has device 4096");
        let msg = err.to_string();
        assert!(
            msg.starts_with("--device cuda:4096: CUDA cannot run here: "),
            "{msg}"
        );
    }
}
