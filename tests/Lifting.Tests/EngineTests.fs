module Lifting.Tests.EngineTests

open System
open Expecto
open TorchSharp
open type TorchSharp.torch
open Lifting

[<Tests>]
let tests =
    testList "EngineTests" [
        test "LibTorch loads and computes a gradient" {
            let x = tensor([| 1.0; -2.0; 3.0 |], dtype = ScalarType.Float64, requires_grad = true)
            let y = (x * x * x).sum()
            let g = autograd.grad([| y |], [| x |]).[0]
            let expected = tensor([| 3.0; 12.0; 27.0 |], dtype = ScalarType.Float64)
            Expect.equal ((g - expected).abs().max().ToDouble()) 0.0 "d/dx Σx³ = 3x²"
        }
        test "device names parse; unknown names and missing CUDA are clear errors" {
            Expect.equal (Devices.Parse "CPU") DeviceChoice.Cpu "case-insensitive"
            Expect.equal (Devices.Resolve "cpu").``type`` DeviceType.CPU "cpu resolves"
            let ex = Expect.throwsC (fun () -> Devices.Parse "tpu" |> ignore) id
            Expect.stringContains ex.Message "tpu" "names the bad value"
            if not (cuda.is_available()) then
                let ex = Expect.throwsC (fun () -> Devices.Resolve "cuda" |> ignore) id
                Expect.stringContains ex.Message "CUDA" "explains what is missing"
                Expect.equal (Devices.Resolve "auto").``type`` DeviceType.CPU "auto falls back to CPU"
        }
    ]
