namespace Lifting.FSharp

open Lifting.Programs

/// A piece of a network as a value: layers (and cuts) appended to whatever comes before it.
/// Pieces compose with `-->` (as in DiffSharp), into longer pieces or onto a network:
///
///     let f1 = Layer.block (Layer.dense 32 --> Layer.relu)      // f₁(x; w₁), a nesting level
///     let program = Program.input [ 64 ] --> f1 --> Layer.dense 10 |> Program.crossEntropy
[<Sealed>]
type Layers(append: Net -> Net, names: string list) =
    /// This piece appended to `net`.
    member _.AppendTo(net: Net) = append net
    /// The layers' names, in order (cuts included).
    member _.Names = names
    override _.ToString() = String.concat " --> " names
    /// The empty piece.
    static member Empty = Layers(id, [])
    /// `a` then `b`.
    static member (-->) (a: Layers, b: Layers) = Layers(a.AppendTo >> b.AppendTo, a.Names @ b.Names)
    /// The network `net` followed by `b`.
    static member (-->) (net: Net, b: Layers) = b.AppendTo net

/// `-->` as a function too (e.g. `List.reduce (-->)`).
[<AutoOpen>]
module Composition =
    let inline (-->) (a: ^a) (b: ^b) : ^c = ((^a or ^b): (static member (-->): ^a * ^b -> ^c) (a, b))

/// The layers of Lifting's builder as values.
[<RequireQualifiedAccess>]
module Layer =
    let private one name (f: Net -> Net) = Layers(f, [ name ])

    /// y = W h + b.
    let dense (units: int) = one $"dense {units}" (fun n -> n.Dense(int64 units))
    /// 2-D convolution (channels, square kernel, stride 1, no padding).
    let conv2d (channels: int) (kernel: int) = one $"conv {channels}×{kernel}" (fun n -> n.Conv2d(int64 channels, int64 kernel))
    /// 2-D convolution with stride and padding.
    let conv2dWith (channels: int) (kernel: int) (stride: int) (padding: int) =
        one $"conv {channels}×{kernel}/{stride}+{padding}" (fun n -> n.Conv2d(int64 channels, int64 kernel, int64 stride, int64 padding))
    let maxPool2d (kernel: int) = one $"maxpool {kernel}" (fun n -> n.MaxPool2d(int64 kernel))
    let avgPool2d (kernel: int) = one $"avgpool {kernel}" (fun n -> n.AvgPool2d(int64 kernel))
    let flatten = one "flatten" (fun n -> n.Flatten())
    /// Any activation, including a user's own (`IActivation`).
    let activation (a: IActivation) = one a.Name (fun n -> n.Activation a)
    let relu = activation Activations.ReLU
    let tanh = activation Activations.Tanh
    let sigmoid = activation Activations.Sigmoid
    let hardTanh = activation Activations.HardTanh
    let identity = activation Activations.Identity
    let softmax = activation Activations.Softmax
    let sign = activation Activations.Sign
    let step = activation Activations.Step
    /// A user's layer, built from the shape it receives.
    let custom (name: string) (make: int64[] -> ILayer) = one name (fun n -> n.Layer(System.Func<_, _>(make)))
    /// Ends the current nesting level: lifting introduces a state here.
    let cut = one "cut" (fun n -> n.Cut())
    /// `layers` as one nesting level f_l (followed by a cut).
    let block (layers: Layers) = layers --> cut
    /// y = W h without a bias.
    let denseNoBias (units: int) = one $"dense {units} (no bias)" (fun n -> n.Dense(int64 units, false))
    /// Batch normalisation over features or channels (training: batch statistics; evaluation: running ones).
    let batchNorm = one "batchnorm" (fun n -> n.BatchNorm())
    /// Layer normalisation over each example's values.
    let layerNorm = one "layernorm" (fun n -> n.LayerNorm())
    /// Dropout with probability p in training.
    let dropout (p: float) = one $"dropout {p}" (fun n -> n.Dropout p)
    /// y = x + f(x), f the layers `body` (a projection on the skip when f changes the shape).
    let residual (body: Layers) = one $"residual ({body})" (fun n -> n.Residual(fun b -> body.AppendTo b))
    /// An Elman RNN h_t = tanh(W x_t + U h_(t−1) + b) with tied weights over the input's rows (or
    /// `valuesPerStep` values per step), cut after every step.
    let elman (hidden: int) = one $"elman {hidden}" (fun n -> n.Elman(int64 hidden))
    /// An Elman RNN with its activation, cut interval and values per step (0: a row of the image).
    let elmanWith (hidden: int) (activation: IActivation) (cutEvery: int) (valuesPerStep: int) =
        one $"elman {hidden}" (fun n -> n.Elman(int64 hidden, activation, cutEvery, int64 valuesPerStep))
    /// A recurrent cell `cell x_t h` (tied weights at every step) unrolled over the input.
    let unroll (hidden: int) (cell: Net -> Net -> Net) = one $"unroll {hidden}" (fun n -> n.Unroll(int64 hidden, System.Func<_, _, _>(cell)))
    /// `block` applied here; every application of one shared block uses the same weights.
    let shared (block: SharedBlock) = one $"shared {block.Name}" (fun n -> n.Apply block)
    /// A block with one set of weights (`Layer.shared` applies it).
    let share (name: string) (body: Layers) = Net.Share((fun n -> body.AppendTo n), name)
    /// The pieces one after the other.
    let concat (pieces: Layers seq) = Seq.fold (fun (a: Layers) b -> a --> b) Layers.Empty pieces

/// Programs: a network from its input shape, finished with a loss.
[<RequireQualifiedAccess>]
module Program =
    /// The start of a network whose examples have this shape (no batch dimension).
    let input (shape: int list) = Net.Input(shape |> List.map int64 |> Array.ofList)
    /// ŷ = φ(x; w) with loss ℓ(ŷ, y).
    let withLoss (loss: ILoss) (net: Net) = net.Loss loss
    let crossEntropy (net: Net) = net.CrossEntropy()
    let mse (net: Net) = net.Mse()
    /// An MLP: flatten, then dense layers of the given sizes (the first is the input size) with
    /// `hidden` between them, cross-entropy.
    let mlp (inputShape: int list) (sizes: int list) (hidden: IActivation) =
        Net.Mlp(inputShape |> List.map int64 |> Array.ofList, sizes |> List.map int64 |> Array.ofList, hidden, Losses.CrossEntropy)
    /// The program's nesting levels, one line each: a chain's blocks f_1 … f_L, or a graph's
    /// segments (one per lifted value and the output).
    let describe (program: NestedProgram) =
        if program.IsChain then [ for b in program.Blocks -> string b ] else [ for s in program.Segments -> string s ]
