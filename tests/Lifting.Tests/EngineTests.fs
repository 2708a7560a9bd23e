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
        test "Threads.RunConcurrently runs every body at the caller's intra-op thread count; one failure is rethrown as it was, several together" {
            let before = Threads.Count
            try
                // A count other than the one in force (LibTorch 2.10 hands the process-wide count to new
                // threads itself, so this also holds without the helper's own setting).
                let wanted = if before = 1 then 2 else 1
                Threads.Set wanted
                let seen = Array.zeroCreate 3
                Threads.RunConcurrently(3, (fun i -> seen.[i] <- Threads.Count), "the probe")
                Expect.sequenceEqual seen [| wanted; wanted; wanted |] $"every body at {wanted} thread(s)"
                let one = Expect.throwsC (fun () -> Threads.RunConcurrently(3, (fun i -> if i = 2 then invalidOp "body 2"), "the probe")) id
                Expect.equal one.Message "body 2" "a single failure is rethrown as it was"
                let several = Expect.throwsC (fun () -> Threads.RunConcurrently(3, (fun i -> if i > 0 then invalidOp $"body {i}"), "the probe")) id
                Expect.stringContains several.Message "the probe" "several failures name the work"
            finally
                Threads.Set before
        }
    ]
