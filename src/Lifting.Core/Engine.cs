using TorchSharp;
using static TorchSharp.torch;

namespace Lifting;

/// Which device tensors live on. `Auto` means CUDA when LibTorch reports it available, else CPU.
public enum DeviceChoice { Auto, Cpu, Cuda }

/// Device selection. Nothing in Lifting assumes CPU: every tensor is created on the device chosen
/// here. CUDA needs the TorchSharp CUDA runtime package in place of TorchSharp-cpu (README, "GPU").
public static class Devices
{
    public static DeviceChoice Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "auto" => DeviceChoice.Auto,
        "cpu" => DeviceChoice.Cpu,
        "cuda" or "gpu" => DeviceChoice.Cuda,
        _ => throw new ArgumentException($"Unknown device '{name}' (expected auto, cpu or cuda)."),
    };

    public static Device Resolve(DeviceChoice choice) => choice switch
    {
        DeviceChoice.Cpu => CPU,
        DeviceChoice.Cuda when cuda.is_available() => CUDA,
        DeviceChoice.Cuda => throw new InvalidOperationException(
            "CUDA was requested but LibTorch reports no CUDA device; this build carries the CPU runtime " +
            "(TorchSharp-cpu). Swap in the CUDA runtime package as the README's \"GPU\" section describes, or use --device cpu."),
        _ => cuda.is_available() ? CUDA : CPU,
    };

    public static Device Resolve(string name) => Resolve(Parse(name));
}
