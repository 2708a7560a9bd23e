/// Fenchel back-propagation (seed 002 §4.2): its limit β → 0 is back-propagation, its targets are
/// the argmins of the linearly perturbed forward problems, and with the all-negative first layer
/// it learns where back-propagation cannot.
module Lifting.Tests.FenchelBackpropTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
type Tensor = torch.Tensor
open Lifting
open Lifting.Programs
open Lifting.Formulations
open Lifting.Training
open Lifting.Tests.Support

let config = { FsCheckConfig.defaultConfig with maxTest = 40; arbitrary = [] }

/// The Fenchel-BP direction of the batch's mean loss with one β for every block.
let fenchel (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) (beta: float) =
    FenchelBackprop.Backward(program, weights.Tensors, x, y, FenchelBackprop.BetaPerBlock(program, [| beta |])).Gradients |> Array.ofSeq

/// The input a of every ReLU layer in the forward pass.
let reluInputs (program: NestedProgram) (weights: Weights) (x: Tensor) =
    use _ = torch.no_grad()
    let found = ResizeArray<Tensor>()
    let mutable h = x
    let mutable k = 0
    for block in program.Blocks do
        for layer in block.Layers do
            let ps = [| for i in 0 .. layer.Parameters.Count - 1 -> weights.Tensors.[k + i] |]
            k <- k + layer.Parameters.Count
            match layer with
            | :? ActivationLayer as a when a.Activation = Activations.ReLU -> found.Add h
            | _ -> ()
            h <- layer.Forward(h, ps)
    found

/// The distance of the ReLU pre-activation nearest to the kink at 0 (infinite without ReLUs).
let distanceToKink (program: NestedProgram) (weights: Weights) (x: Tensor) =
    reluInputs program weights x |> Seq.fold (fun nearest a -> min nearest (a.abs().min().ToDouble())) Double.PositiveInfinity

/// The weight gradient of seed 002's linearised local contrastive surrogate (Prop. 7, §4.2) of an
/// MLP, computed from the activations' conjugates G* alone: the signals g_k come top-down from
/// g_L = ∂ℓ/∂ŷ, δ_k = ∇_a (G*(a_k) − G*(a_k − βg_k))/β and g_{k−1} = W_kᵀδ_k; then the surrogate
/// Σ_k (G*(W_k z_{k−1} + b_k) − G*(W_k z_{k−1} + b_k − βg_k))/β, with the g_k held fixed and the z_{k−1}
/// fixed forward values (Remark 2: only level k's own term, at the forward input, gives W_k's
/// gradient), is differentiated in the weights by autograd. The output layer has
/// no activation: its potential is the identity's, ½‖z‖².
let surrogateGradient (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) (beta: float) =
    use _ = torch.enable_grad()
    let w = weights.Tensors
    let layers = w.Count / 2
    let potential k =
        let act = if k = layers - 1 then Activations.Identity else (program.Blocks.[k].Layers |> Seq.pick (function :? ActivationLayer as a -> Some a.Activation | _ -> None))
        match act.Potential with null -> failwith "no potential" | p -> p
    let activation k = if k = layers - 1 then Activations.Identity else (program.Blocks.[k].Layers |> Seq.pick (function :? ActivationLayer as a -> Some a.Activation | _ -> None))
    // Forward: each level's pre-activation has a graph through its own weights only; its input
    // z_{k−1} is a fixed forward value (the lower levels' dependence travels in g_{k−1}).
    let pre = Array.zeroCreate<Tensor> layers
    let mutable z = x
    for k in 0 .. layers - 1 do
        pre.[k] <- torch.nn.functional.linear(z.detach(), w.[2 * k], w.[2 * k + 1])
        z <- (activation k).Apply(pre.[k])
    let output = z.detach().requires_grad_(true)
    let g = Array.zeroCreate<Tensor> layers
    g.[layers - 1] <- torch.autograd.grad([| program.Loss.PerExample(output, y).sum() |], [| output |]).[0].detach()
    for k in layers - 1 .. -1 .. 1 do
        let a = pre.[k].detach().requires_grad_(true)
        let p = potential k
        let delta = torch.autograd.grad([| (p.Conjugate(a) - p.Conjugate(a - beta * g.[k])).sum() / beta |], [| a |]).[0]
        g.[k - 1] <- delta.mm(w.[2 * k]).detach()
    let surrogate =
        [ for k in 0 .. layers - 1 -> let p = potential k in (p.Conjugate(pre.[k]) - p.Conjugate(pre.[k] - beta * g.[k])).sum() / beta ]
        |> List.reduce (+)
    torch.autograd.grad([| surrogate / float x.shape.[0] |], w |> Array.ofSeq) |> Array.ofSeq

/// ReLU's signal in closed form, case by case (seed 002 eq. 51 read off the four cases of
/// relu(a) − relu(a − βg)).
let reluSignalClosedForm (a: float) (g: float) (beta: float) =
    let shifted = a - beta * g
    if a > 0.0 && shifted > 0.0 then g
    elif a > 0.0 then a / beta
    elif shifted > 0.0 then g - a / beta
    else 0.0

[<Tests>]
let tests =
    testList "FenchelBackpropTests" [
        testPropertyWithConfig config "Fenchel BP at beta = 1e-6 equals back-propagation (relative error < 1e-4) on random ReLU and tanh MLPs away from ReLU kinks" <|
            Prop.forAll (Arb.fromGen genReluTanhMlp) (fun m ->
                let program = m.Program
                let x, y = randomBatch m.Seed m.Batch m.Inputs m.Classes
                use weights = program.Initialise(m.Seed, torch.CPU, f64)
                // Away from kinks: every ReLU pre-activation farther from 0 than the shift β|g|.
                let awayFromKinks = distanceToKink program weights x > 1e-3
                let err = relativeError (fenchel program weights x y 1e-6) (backpropGradient program weights x y)
                awayFromKinks ==> (err < 1e-4 |> Prop.label $"relative error {err}"))

        // A pre-activation within β|g| of ReLU's kink takes the other side's slope in the difference
        // quotient (CI once drew one 1.5e-5 from 0: cosine 0.990 at β = 0.001, 1.0 at 1e-6), so the
        // claim is made away from kinks, as for the β = 1e-6 property above.
        // The rise is claimed where the O(beta) expansion holds, from 0.1 down: at beta = 1 the
        // direction is not yet near the limit, and CI drew a ReLU net (seed 96912, batch 3) whose
        // cosine fell from 0.970 at beta = 1 to 0.966 at 0.1 before rising to 1.0 at 0.01.
        testPropertyWithConfig config "the cosine between Fenchel BP and back-propagation rises as beta goes 0.1, 0.01, 0.001 and is >= 0.999 at 0.001 (random ReLU and tanh MLPs away from ReLU kinks)" <|
            Prop.forAll (Arb.fromGen genReluTanhMlp) (fun m ->
                let program = m.Program
                let x, y = randomBatch m.Seed (m.Batch + 2L) m.Inputs m.Classes
                use weights = program.Initialise(m.Seed, torch.CPU, f64)
                let awayFromKinks = distanceToKink program weights x > 1e-2
                let reference = backpropGradient program weights x y
                let cosines = [ for beta in [ 1.0; 0.1; 0.01; 0.001 ] -> cosine (fenchel program weights x y beta) reference ]
                let rising = cosines |> List.tail |> List.pairwise |> List.forall (fun (c, next) -> next >= c - 1e-12)
                awayFromKinks ==> ((rising && List.last cosines >= 0.999) |> Prop.label $"cosines {cosines}"))

        testPropertyWithConfig config "at finite beta (0.5, 3) the Fenchel BP direction is the weight gradient of the linearised local contrastive surrogate built from the conjugates G*, taken at the forward inputs (Remark 2)" <|
            Prop.forAll (Arb.fromGen genReluTanhMlp) (fun m ->
                let program = m.Program
                let x, y = randomBatch m.Seed m.Batch m.Inputs m.Classes
                use weights = program.Initialise(m.Seed, torch.CPU, f64)
                let errors = [ for beta in [ 0.5; 3.0 ] -> relativeError (fenchel program weights x y beta) (surrogateGradient program weights x y beta) ]
                List.forall (fun e -> e < 1e-10) errors |> Prop.label $"relative errors {errors}")

        testPropertyWithConfig config "the ReLU target signal (relu(a) - relu(a - beta g)) / beta equals its closed form case by case" <|
            Prop.forAll (Arb.fromGen (Gen.choose (0, 100000))) (fun seed ->
                use g = new torch.Generator(uint64 seed)
                let a = 2.0 * torch.randn([| 64L |], dtype = f64, generator = g)
                let signal = 2.0 * torch.randn([| 64L |], dtype = f64, generator = g)
                let beta = Math.Exp(torch.empty([| 1L |], dtype = f64).uniform_(-5.0, 3.0, generator = g).ToDouble())
                let delta = FenchelBackprop.Signal(Activations.ReLU, a, signal, beta)
                let expected = [| for i in 0L .. 63L -> reluSignalClosedForm (a.[i].ToDouble()) (signal.[i].ToDouble()) beta |]
                let got = delta.data<float>().ToArray()
                Array.forall2 (fun (u: float) v -> abs (u - v) <= 1e-9 * (1.0 + abs v)) got expected)

        test "in float32 the finite difference does not cancel: at beta |g| ~ 1e-8 |a| the signal is sigma'(a) g to 1e-4 for relu, tanh and sigmoid" {
            use gen = new torch.Generator(3UL)
            let a = torch.randn([| 200L |], dtype = torch.float32, generator = gen)
            let g = 1e-4f * torch.randn([| 200L |], dtype = torch.float32, generator = gen)
            let beta = 1e-4
            for activation, derivative in
                    [ Activations.ReLU, (fun (t: Tensor) -> t.relu().sign().to_type(f64))
                      Activations.Tanh, (fun (t: Tensor) -> 1.0 - t.tanh().square())
                      Activations.Sigmoid, (fun (t: Tensor) -> t.sigmoid() * (1.0 - t.sigmoid())) ] do
                let delta = FenchelBackprop.Signal(activation, a, g, beta)
                Expect.equal delta.dtype torch.float32 "float32 in, float32 out"
                let expected = derivative (a.to_type f64) * g.to_type f64
                let err = relativeError [ delta.to_type f64 ] [ expected ]
                Expect.isLessThan err 1e-4 $"{activation.Name}: relative error {err}"
        }

        test "every activation's target is the argmin of its linearly perturbed forward problem: delta is the gradient of (G*(a) - G*(a - beta g)) / beta, and the Fenchel-Young gap at the target is 0" {
            use gen = new torch.Generator(7UL)
            for activation in Activations.All do
                let potential = match activation.Potential with null -> failtest $"{activation.Name} has no potential" | p -> p
                for beta in [ 1e-3; 0.1; 1.0; 5.0 ] do
                    let a = 1.5 * torch.randn([| 6L; 5L |], dtype = f64, generator = gen)
                    let g = torch.randn([| 6L; 5L |], dtype = f64, generator = gen)
                    let delta = FenchelBackprop.Signal(activation, a, g, beta)
                    let viaPotential =
                        use _ = torch.enable_grad()
                        let leaf = a.detach().requires_grad_(true)
                        let surrogate = (potential.Conjugate(leaf) - potential.Conjugate(leaf - beta * g)).sum() / beta
                        torch.autograd.grad([| surrogate |], [| leaf |]).[0]
                    Expect.isLessThan (relativeError [ delta ] [ viaPotential ] ) 1e-9 $"{activation.Name}, beta {beta}: delta = grad of the Fenchel surrogate"
                    let shifted = a - beta * g
                    let target = activation.Apply(shifted)
                    let gap = potential.G(target) + potential.Conjugate(shifted) - (target * shifted).reshape(6L, -1L).sum(1L)
                    Expect.isLessThan (gap.abs().max().ToDouble()) 1e-9 $"{activation.Name}, beta {beta}: G(z) + G*(s) - <z, s> = 0 at z = sigma(s)"
        }

        test "Fenchel BP at beta = 1e-6 equals back-propagation through conv, max-pool, flatten and dense layers (local vector-Jacobian products)" {
            let program =
                Net.Input(2L, 8L, 8L).Conv2d(3L, 3L).Tanh().MaxPool2d(2L).Cut()
                    .Conv2d(4L, 2L, padding = 1L).ReLU().AvgPool2d(2L).Flatten().Dense(5L).ReLU().Dense(3L).CrossEntropy()
            use g = new torch.Generator(11UL)
            let x = torch.randn([| 4L; 2L; 8L; 8L |], dtype = f64, generator = g)
            let y = torch.randint(3L, [| 4L |], generator = g)
            use weights = program.Initialise(4, torch.CPU, f64)
            Expect.isGreaterThan (distanceToKink program weights x) 1e-4 "no ReLU pre-activation near its kink"
            let err = relativeError (fenchel program weights x y 1e-6) (backpropGradient program weights x y)
            Expect.isLessThan err 1e-4 "relative error to backprop"
            let far = relativeError (fenchel program weights x y 1.0) (backpropGradient program weights x y)
            Expect.isGreaterThan far 1e-3 "at beta = 1 the direction differs from backprop"
        }

        test "beta per block: each block's activations use their own beta (the blocks' own beta gives the same direction as one beta for all)" {
            let program = mlp 4L [ 5L; 6L ] 3L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 5 6L 4L 3L
            use weights = program.Initialise(2, torch.CPU, f64)
            let run (betas: float list) = FenchelBackprop.Backward(program, weights.Tensors, x, y, FenchelBackprop.BetaPerBlock(program, Array.ofList betas)).Gradients
            Expect.isLessThan (relativeError (run [ 0.7; 0.7; 0.7 ]) (run [ 0.7 ])) 1e-15 "three equal values = one value"
            let mixed = run [ 0.7; 2.0; 0.7 ]
            Expect.isGreaterThan (relativeError mixed (run [ 0.7 ])) 1e-6 "block 2's beta matters"
            // Block 2's beta acts on block 2's activation only: the last dense layer's gradient is
            // the same whatever β, since nothing above it is an activation.
            Expect.isLessThan (relativeError [ mixed.[4]; mixed.[5] ] [ (run [ 0.7 ]).[4]; (run [ 0.7 ]).[5] ]) 1e-15 "the output layer's gradient does not depend on beta"
        }

        // At β = 1e4 the error signal can still die above the first layer. Rarely (none of seeds
        // 0–1999; CI drew seed 75562, whose batch holds only classes 0 and 2) every unit of the top
        // hidden layer is left on the inactive side, and then no layer below it gets a gradient.
        testPropertyWithConfig config "with the all-negative first layer and inputs in [0, 1], back-propagation's first-layer gradient is exactly zero; Fenchel BP's is zero at beta = 1e-6 and, unless the signal dies in a layer above, not at beta = 1e4" <|
            Prop.forAll (Arb.fromGen (Gen.choose (0, 100000))) (fun seed ->
                let program = (mlp 12L [ 10L; 8L; 6L ] 3L Activations.ReLU Losses.CrossEntropy).Apply(InitialisationScheme.NegativeFirstLayer)
                use g = new torch.Generator(uint64 seed)
                let x = torch.rand([| 8L; 12L |], dtype = f64, generator = g)
                let y = torch.randint(3L, [| 8L |], generator = g)
                use weights = program.Initialise(seed, torch.CPU, f64)
                let backprop = backpropGradient program weights x y
                let small = fenchel program weights x y 1e-6
                let large = fenchel program weights x y 1e4
                let norm (t: Tensor) = t.abs().max().ToDouble()
                let diesAbove = norm large.[2] = 0.0 || norm large.[4] = 0.0
                (norm backprop.[0] = 0.0 && norm backprop.[1] = 0.0 && norm small.[0] = 0.0 && (norm large.[0] > 0.0 || diesAbove))
                |> Prop.label $"backprop {norm backprop.[0]}, beta 1e-6 {norm small.[0]}, beta 1e4 {norm large.[0]} (layers 2, 3: {norm large.[2]}, {norm large.[4]})")

        test "the Glorot schemes: weights within ±sqrt(6 / (fan_in + fan_out)), zero biases, the first layer all-negative under glorot-negative-first" {
            let program = mlp 30L [ 20L; 10L ] 4L Activations.ReLU Losses.CrossEntropy
            for scheme in [ InitialisationScheme.Glorot; InitialisationScheme.NegativeFirstLayer ] do
                use w = program.Apply(scheme).Initialise(3, torch.CPU, f64)
                let fans = [ 30.0, 20.0; 20.0, 10.0; 10.0, 4.0 ]
                for layer, (fanIn, fanOut) in List.indexed fans do
                    let bound = sqrt (6.0 / (fanIn + fanOut))
                    let weight, bias = w.Tensors.[2 * layer], w.Tensors.[2 * layer + 1]
                    Expect.isLessThanOrEqual (weight.abs().max().ToDouble()) bound $"{scheme} layer {layer + 1}: |w| <= {bound}"
                    Expect.isGreaterThan (weight.abs().max().ToDouble()) (0.8 * bound) $"{scheme} layer {layer + 1}: the range is used"
                    Expect.equal (bias.abs().max().ToDouble()) 0.0 $"{scheme} layer {layer + 1}: zero bias"
                    let negativeFirst = scheme = InitialisationScheme.NegativeFirstLayer && layer = 0
                    Expect.equal (weight.max().ToDouble() <= 0.0) negativeFirst $"{scheme} layer {layer + 1}: all weights <= 0 exactly when it is the negative first layer"
            Expect.equal (Initialisation.Parse "glorot-negative-first") InitialisationScheme.NegativeFirstLayer "parsed by name"
            Expect.throwsT<ArgumentException> (fun () -> Initialisation.Parse "negative" |> ignore) "an unknown scheme is refused"
        }

        test "the host's --init picks the initialisation scheme of the program it builds, and refuses unknown names" {
            let set (e: Lifting.Host.Experiment) (k: string) (v: string) = e.Set(k, v, true)
            let e = set (set (set (set (Lifting.Host.Experiment()) "init" "glorot-negative-first") "method" "fenchel-bp") "beta" "0.5,1") "net" "64-32-10"
            Expect.equal e.Init "glorot-negative-first" "the run key"
            Expect.equal (e.Parameters.["beta"]) "0.5,1" "beta stays a method parameter"
            use run = Lifting.Host.PreparedRun.Prepare(e)
            use w = run.Program.Initialise(0)
            Expect.isLessThanOrEqual (w.Tensors.[0].max().ToDouble()) 0.0 "the first layer is all-negative"
            Expect.equal (w.Tensors.[1].abs().max().ToDouble()) 0.0 "zero biases"
            Expect.throwsT<Lifting.Host.UsageException> (fun () -> set (Lifting.Host.Experiment()) "init" "negative" |> ignore) "unknown scheme"
        }

        test "fenchel-bp's beta takes one value or a comma-separated list; bad values and a wrong count are refused with one-line errors" {
            let resolve (beta: string) = Methods.Resolve(MethodSettings("fenchel-bp").With("beta", beta))
            let formulation (m: ResolvedMethod) = m.Formulation :?> FenchelBackprop
            Expect.sequenceEqual (formulation (resolve "0.5, 1,1,2")).Beta [ 0.5; 1.0; 1.0; 2.0 ] "a list"
            Expect.sequenceEqual (formulation (resolve "1e-2")).Beta [ 0.01 ] "one value"
            Expect.equal ((resolve "0.5,1").Arguments.Text "beta") "0.5,1" "canonical text"
            let parameter = match (Methods.Find "fenchel-bp").Parameter "beta" with null -> failtest "no beta" | p -> p
            Expect.equal parameter.Domain "> 0, or a list x,y,…" "listed domain"
            for bad in [ "-1"; "0"; "0.5,,1"; "1,abc"; "1,nan"; "" ] do
                // The parameter itself refuses the value, before any formulation sees it.
                let e = Expect.throwsC (fun () -> parameter.Normalise bad |> ignore) id
                Expect.isTrue (e :? ArgumentException && e.Message = $"Invalid beta: '{bad}' (expected > 0, or a list x,y,…).") $"'{bad}': {e.Message}"
                Expect.throwsT<ArgumentException> (fun () -> resolve bad |> ignore) $"'{bad}' refused when resolving"
            let program = mlp 4L [ 5L; 6L ] 3L Activations.ReLU Losses.CrossEntropy
            let e = Expect.throwsC (fun () -> FenchelBackprop.BetaPerBlock(program, [| 1.0; 2.0 |]) |> ignore) id
            Expect.stringContains e.Message "2 values for a program of 3 blocks" "the count is checked against the blocks"
        }

        test "an activation without a convex potential is refused by name" {
            let noPotential =
                { new IActivation with
                    member _.Name = "silu"
                    member _.Range = ActivationRange.Real
                    member _.Differentiable = true
                    member _.Potential = null
                    member _.Apply(x) = torch.nn.functional.silu(x)
                    member _.Reparametrise(u) = u.alias()
                    member _.Preimage(h) = h.clone() }
            let program = mlp 4L [ 5L ] 3L noPotential Losses.CrossEntropy
            let e = Expect.throwsC (fun () -> FenchelBackprop.BetaPerBlock(program, [| 1.0 |]) |> ignore) id
            Expect.stringContains e.Message "'silu' has none" "names the activation"
        }

        test "fenchel-bp trains the digits MLP to >= 0.93 test accuracy at the validation-selected epoch, and leaves no tensor behind" {
            let train () =
                TrainingTests.trainWith (MethodSettings("fenchel-bp").With("beta", "0.01")) (TrainingTests.digitsMlp 64L)
                    (TrainingOptions(Epochs = 10, BatchSize = 64, Seed = 0, CosineToBackprop = true))
            (train ()).Dispose()
            let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
            let before = live ()
            let result = train ()
            let accuracy, cosine = result.Selected.TestAccuracy, result.Epochs.[0].CosineToBackprop.Value
            result.Dispose()
            Expect.equal (live ()) before "no tensor outlives the run"
            Expect.isGreaterThanOrEqual accuracy 0.93 $"test accuracy {accuracy}"
            Expect.isGreaterThan cosine 0.99 $"cosine to backprop at the first batch {cosine}"
        }
    ]
