/// Shared helpers for the tests: float64 tensors, random programs, comparisons.
module Lifting.Tests.Support

open System
open TorchSharp
open type TorchSharp.torch
open Lifting.Programs

let f64 = ScalarType.Float64

/// Relative error ‖a − b‖ / max(‖b‖, tiny) over lists of tensors.
let relativeError (a: Tensor seq) (b: Tensor seq) =
    let a = a |> Seq.map (fun t -> t.flatten()) |> Array.ofSeq
    let b = b |> Seq.map (fun t -> t.flatten()) |> Array.ofSeq
    let da = cat(a, 0L)
    let db = cat(b, 0L)
    (da - db).norm().ToDouble() / max (db.norm().ToDouble()) 1e-30

let scalar (t: Tensor) = t.ToDouble()

/// A random batch of inputs and labels, float64, from a seed.
let randomBatch (seed: int) (batch: int64) (inputs: int64) (classes: int64) =
    use g = new Generator(uint64 seed)
    let x = randn([| batch; inputs |], dtype = f64, generator = g)
    let y = randint(classes, [| batch |], generator = g)
    x, y

/// A random MLP: input size, hidden sizes, classes, activation.
let mlp (inputs: int64) (hidden: int64 list) (classes: int64) (activation: IActivation) (loss: ILoss) =
    let sizes = [ inputs ] @ hidden @ [ classes ] |> Array.ofList
    Net.Mlp([| inputs |], sizes, activation, loss)

/// Back-propagation gradient of the mean loss.
let backpropGradient (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) =
    use _ = enable_grad()
    let loss = program.Loss.PerExample(program.Forward(x, weights.Tensors), y).mean()
    autograd.grad([| loss |], weights.Tensors |> Array.ofSeq) |> Array.ofSeq
