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
    /// The program's blocks f_1 … f_L, one line each.
    let describe (program: NestedProgram) = [ for b in program.Blocks -> string b ]
