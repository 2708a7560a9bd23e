/// DistProp (seed 001 §3): the objective and operator against a hand computation, the memory
/// that does not grow with the dataset, the fixed variates, the Gaussians' shapes and
/// initialisation, and a short training run.
module Lifting.Tests.DistPropTests

open System
open Expecto
open TorchSharp
open type TorchSharp.torch
open Lifting
open Lifting.Programs
open Lifting.Formulations
open Lifting.Solvers
open Lifting.Training
open Lifting.Tests.Support
type F = TorchSharp.torch.nn.functional

/// A count as a real number (`float` and `double` name torch's dtypes here).
let real (v: int64) = Convert.ToDouble v

let player (game: IBatchGame) name = game.Players |> Seq.find (fun p -> p.Name = name)

let shared (problem: ILiftedProblem) name = (problem :?> LiftedProblem).SharedState.[name]

/// A tiny tanh MLP 3 → 4 (→ 5) → 3 on 7 examples of 3 classes, lifted by DistProp; the Gaussians
/// and multipliers are moved off their initial values so that every term is non-trivial.
let tinyProblem (hidden: int64 list) (options: DistPropOptions) =
    let program = mlp 3L hidden 3L Activations.Tanh Losses.CrossEntropy
    let x, _ = randomBatch 31 7L 3L 3L
    let y = tensor([| 0L; 2L; 2L; 1L; 0L; 2L; 2L |])
    let w = program.Initialise(4, CPU, f64)
    let problem, game, _ = liftAll (DistProp(options)) program w x y 3 0 (constantRules 0.1)
    use g = new Generator(8UL)
    using (no_grad()) (fun _ ->
        for v in (player game PlayerNames.States).Variables do v.add_(0.4 * randn(v.shape, dtype = f64, generator = g)) |> ignore
        for v in (player game PlayerNames.Multipliers).Variables do v.copy_(randn(v.shape, dtype = f64, generator = g)) |> ignore)
    program, w, x, y, problem, game

/// Seed 001 §3 written out for a tanh MLP with pre-activation states: per example
/// ⟨λ_1, g_ε(z_1)⟩, per class c (weight n_c) the mean over its S samples of the deeper
/// constraints' ⟨λ_l, g_ε(z_l)⟩ and of the loss on the last samples; divided by the batch size.
let handObjective (w: Weights) (x: Tensor) (y: Tensor) (problem: ILiftedProblem) (game: IBatchGame) (options: DistPropOptions) =
    let weights = w.Tensors |> Array.ofSeq
    let states = (player game PlayerNames.States).Variables |> Array.ofSeq
    let lambdas = (player game PlayerNames.Multipliers).Variables |> Array.ofSeq
    let cuts = states.Length / 2
    let shrink (z: Tensor) =
        if options.ReducedConstraint then F.relu(z.abs().reshape(z.shape.[0], -1L).sum(1L) - options.Epsilon)
        else F.softshrink(z, options.Epsilon)
    let counts = [| for c in 0L .. 2L -> y.eq(tensor(c)).sum().to_type(ScalarType.Float64) |]
    let s = Convert.ToInt64 options.SamplesPerClass
    let mean l = states.[2 * l]
    // One σ row shared by the classes, or one per class.
    let scale l = F.softplus(states.[2 * l + 1]).expand((mean l).shape)
    let perExample = options.Multipliers = MultiplierPlacement.Example
    // The first cut: f_1 = W_1 x + b_1, z-scored against the example's class.
    let f1 = F.linear(x, weights.[0], weights.[1])
    let z1 = (f1 - mean(0).index_select(0L, y)) / scale(0).index_select(0L, y)
    let lambda1 = if perExample then lambdas.[0] else lambdas.[0].index_select(0L, y)
    // The augmented Lagrangian adds (c/2)‖g‖² beside each ⟨λ, g⟩.
    let augmented (lambda: Tensor) (g: Tensor) = (lambda * g).sum() + 0.5 * options.Augmentation * g.square().sum()
    let mutable total = augmented lambda1 (shrink z1)
    let variates l = shared problem $"variates{l + 1}"
    for c in 0L .. 2L do
        for k in 0L .. s - 1L do
            let mutable h = mean(0).[c] + variates(0).[c].[k] * scale(0).[c]
            for l in 1 .. cuts - 1 do
                let f = F.linear(h.tanh().unsqueeze(0L), weights.[2 * l], weights.[2 * l + 1])
                let z = (f - mean(l).[c].unsqueeze(0L)) / scale(l).[c].unsqueeze(0L)
                let lambda = if perExample then lambdas.[l].[c].[k] else lambdas.[l].[c]
                total <- total + counts.[Convert.ToInt32 c] * augmented (lambda.reshape(1L, -1L)) ((shrink z).reshape(1L, -1L)) / real s
                h <- mean(l).[c] + variates(l).[c].[k] * scale(l).[c]
            let logits = F.linear(h.tanh().unsqueeze(0L), weights.[2 * cuts], weights.[2 * cuts + 1])
            let loss = F.cross_entropy(logits, tensor([| c |]))
            total <- total + counts.[Convert.ToInt32 c] * loss / real s
    total / real x.shape.[0]

let variants = [
    "per class", DistPropOptions(Epsilon = 0.3, SamplesPerClass = 2, Multipliers = MultiplierPlacement.Class)
    "per example", DistPropOptions(Epsilon = 0.3, SamplesPerClass = 2, Multipliers = MultiplierPlacement.Example)
    "reduced, per example", DistPropOptions(Epsilon = 1.5, SamplesPerClass = 3, Multipliers = MultiplierPlacement.Example, ReducedConstraint = true)
    "reduced, per class, ε = 0", DistPropOptions(Epsilon = 0.0, SamplesPerClass = 1, ReducedConstraint = true, Multipliers = MultiplierPlacement.Class)
    "per example, augmented c = 0.7, shared σ", DistPropOptions(Epsilon = 0.3, SamplesPerClass = 2, Multipliers = MultiplierPlacement.Example, Augmentation = 0.7, SharedScale = true)
    "per class, augmented c = 2, reduced", DistPropOptions(Epsilon = 1.5, SamplesPerClass = 2, Multipliers = MultiplierPlacement.Class, Augmentation = 2.0, ReducedConstraint = true)
]

/// Trains DistProp on the digits with an explicit late cut (a two-layer first block).
let digitsRun (settings: MethodSettings) epochs seed =
    let data = TrainingTests.digits.Force()
    let program = Net.Input(1L, 8L, 8L).Flatten().Dense(64L).ReLU().Dense(32L).ReLU().Cut().Dense(10L).CrossEntropy()
    let m = Methods.Resolve settings
    Trainer.Train(program, data, m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = epochs, BatchSize = 64, Seed = seed))

[<Tests>]
let tests =
    testList "DistPropTests" [
        for (name, options) in variants do
            for hidden in [ [ 4L ]; [ 4L; 5L ] ] do
                test $"the batch objective is seed 001 §3's Lagrangian written out by hand ({name}, {hidden.Length} cut(s))" {
                    let _, w, x, y, problem, game = tinyProblem hidden options
                    use _p = problem
                    use _g = game
                    let expected = handObjective w x y problem game options
                    Expect.floatClose Accuracy.veryHigh (game.Objective()) (expected.ToDouble()) "objective"
                }

        for (name, options) in variants do
            test $"the operator is the hand objective's gradient: batch mean for shared players, own term for per-example rows ({name})" {
                let _, w, x, y, problem, game = tinyProblem [ 4L; 5L ] options
                use _p = problem
                use _g = game
                let players = game.Players |> Array.ofSeq
                let ops = game.Operator(players)
                let variables = players |> Array.collect (fun p -> p.Variables |> Array.ofSeq)
                let expected =
                    use _ = enable_grad()
                    let objective = handObjective w x y problem game options
                    autograd.grad([| objective |], variables) |> Array.ofSeq
                let b = real x.shape.[0]
                let mutable k = 0
                for p in players do
                    for i in 0 .. p.Variables.Count - 1 do
                        // d/dv of (1/B) Σ_i L_i is the batch mean; a per-example row gets B times that.
                        let rowScale = if p.RowIndexed && p.Name = PlayerNames.Multipliers && i = 0 then b else 1.0
                        let sign = if p.Role = Role.Maximise then -1.0 else 1.0
                        let err = relativeError [ ops.[Array.IndexOf(players, p)].[i] ] [ sign * rowScale * expected.[k] ]
                        Expect.isLessThan err 1e-10 $"{p.Name}[{i}]"
                        k <- k + 1
            }

        test "the Gaussians: M rows per cut shaped like the state, means on the unit sphere, σ = softplus(W_σ) = 1, fixed variates [M, S, …]" {
            let program = Zoo.Seed001Conv([| 1L; 28L; 28L |], 10)
            let x = randn([| 12L; 1L; 28L; 28L |], dtype = f64)
            let y = tensor([| 0L .. 9L |] |> Array.append [| 3L; 4L |])
            use w = program.Initialise(1, CPU, f64)
            let problem, game, _ = liftAll (DistProp(DistPropOptions(SamplesPerClass = 3, Multipliers = MultiplierPlacement.Class))) program w x y 10 0 (constantRules 0.1)
            use _p = problem
            use _g = game
            let mu, sigma, e = shared problem "mu1", shared problem "sigma1", shared problem "variates1"
            Expect.sequenceEqual mu.shape [| 10L; 16L; 5L; 5L |] "μ_1: one 16×5×5 mean per class"
            Expect.sequenceEqual sigma.shape [| 10L; 16L; 5L; 5L |] "σ_1's weights: one per class"
            Expect.sequenceEqual e.shape [| 10L; 3L; 16L; 5L; 5L |] "S = 3 variates per class"
            let norms = mu.reshape(10L, -1L).square().sum(1L).sqrt()
            Expect.isLessThan ((norms - 1.0).abs().max().ToDouble()) 1e-12 "every class mean on the unit sphere"
            Expect.isLessThan ((F.softplus(sigma) - 1.0).abs().max().ToDouble()) 1e-12 "σ = 1"
            Expect.isGreaterThan ((mu.[0] - mu.[1]).abs().max().ToDouble()) 1e-3 "classes start at different points"
            Expect.equal problem.Store.Bytes 0L "nothing per example with per-class multipliers"
        }

        test "shared-scale keeps one σ row per cut for every class; feature-scale-means puts each class mean on the sphere of radius √H" {
            let program = Zoo.Seed001Conv([| 1L; 28L; 28L |], 10)
            let x = randn([| 12L; 1L; 28L; 28L |], dtype = f64)
            let y = tensor([| 0L .. 9L |] |> Array.append [| 3L; 4L |])
            use w = program.Initialise(1, CPU, f64)
            let options = DistPropOptions(SamplesPerClass = 3, Multipliers = MultiplierPlacement.Class, SharedScale = true, FeatureScaleMeans = true)
            let problem, game, _ = liftAll (DistProp(options)) program w x y 10 0 (constantRules 0.1)
            use _p = problem
            use _g = game
            let mu, sigma = shared problem "mu1", shared problem "sigma1"
            Expect.sequenceEqual sigma.shape [| 1L; 16L; 5L; 5L |] "σ_1's weights: one row for all classes"
            let norms = mu.reshape(10L, -1L).square().sum(1L).sqrt()
            Expect.isLessThan ((norms - sqrt 400.0).abs().max().ToDouble()) 1e-10 "every class mean at radius √400 = 20"
            // The one σ row is a trained variable: a step moves it.
            Solvers.Extragradient().Step(game)
            Expect.isGreaterThan ((F.softplus(sigma) - 1.0).abs().max().ToDouble()) 1e-6 "σ moved"
        }

        test "fixed-means holds the class means and fixed-scales holds σ = 1 where they start while steps move the other; unfixed, both move" {
            let program = Zoo.Seed001Conv([| 1L; 28L; 28L |], 10)
            let x = randn([| 12L; 1L; 28L; 28L |], dtype = f64)
            let y = tensor([| 0L .. 9L |] |> Array.append [| 3L; 4L |])
            let moves fixedMeans fixedScales =
                use w = program.Initialise(1, CPU, f64)
                let options = DistPropOptions(SamplesPerClass = 3, Multipliers = MultiplierPlacement.Example, FeatureScaleMeans = true, FixedMeans = fixedMeans, FixedScales = fixedScales)
                let problem, game, _ = liftAll (DistProp(options)) program w x y 10 0 (constantRules 0.1)
                use _p = problem
                use _g = game
                let mu, sigma = shared problem "mu1", shared problem "sigma1"
                let before = mu.clone()
                for _ in 1 .. 3 do Solvers.Extragradient().Step(game)
                (mu - before).abs().max().ToDouble(), (F.softplus(sigma) - 1.0).abs().max().ToDouble()
            let meanMove, scaleMove = moves true false
            Expect.equal meanMove 0.0 "fixed-means: the means did not move"
            Expect.isGreaterThan scaleMove 1e-6 "fixed-means: σ moved"
            let meanMove, scaleMove = moves false true
            Expect.isGreaterThan meanMove 1e-6 "fixed-scales: the means moved"
            Expect.isLessThan scaleMove 1e-12 "fixed-scales: σ stayed 1"
            let meanMove, scaleMove = moves false false
            Expect.isGreaterThan meanMove 1e-6 "learned means move under the same steps"
            Expect.isGreaterThan scaleMove 1e-6 "learned σ moves under the same steps"
        }

        test "state bytes: DistProp flat in N with per-class multipliers, linear in N (one multiplier row per example) with per-example ones; ExtraProp linear with four rows per example" {
            let program = mlp 6L [ 8L ] 3L Activations.Tanh Losses.CrossEntropy
            let bytes (n: int64) placement =
                let x, y = randomBatch 5 n 6L 3L
                use w = program.Initialise(1, CPU, f64)
                let rules = Func<string, IStepRule>(fun _ -> StepRules.AdaGrad(0.1))
                let context = LiftContext(program, dataset x y 3, CPU, f64, 0, rules, 0)
                use problem = DistProp(DistPropOptions(Multipliers = placement, SamplesPerClass = 2)).Lift(context, w)
                problem.StateBytes, problem.Store.Bytes
            let perClass = [ for n in [ 100L; 400L; 800L ] -> bytes n MultiplierPlacement.Class ]
            for (total, store) in perClass do
                Expect.equal store 0L "no per-example store"
                Expect.equal total (fst perClass.[0]) "the same bytes whatever N"
            // μ, W_σ (each with an AdaGrad accumulator), variates [3, 2, 8], λ [3, 8] with its accumulator; float64.
            Expect.equal (fst perClass.[0]) (8L * (2L * 2L * 3L * 8L + 3L * 2L * 8L + 2L * 3L * 8L)) "the per-class bytes by hand"
            let perExample = [ for n in [ 100L; 400L; 800L ] -> bytes n MultiplierPlacement.Example ]
            let (t100, s100), (t400, s400), (t800, s800) = perExample.[0], perExample.[1], perExample.[2]
            // Each example: λ_1[i] ∈ ℝ⁸ and its AdaGrad accumulator, float64.
            Expect.equal (s400 - s100) (300L * 2L * 8L * 8L) "the store grows by one multiplier row (and its step state) per example"
            Expect.equal (t800 - t400) (s800 - s400) "only the store grows"
            // ExtraProp for comparison: a state and a multiplier row per example, each with its accumulator.
            let extraprop (n: int64) =
                let x, y = randomBatch 5 n 6L 3L
                use w = program.Initialise(1, CPU, f64)
                let context = LiftContext(program, dataset x y 3, CPU, f64, 0, Func<string, IStepRule>(fun _ -> StepRules.AdaGrad(0.1)), 0)
                use problem = MultipleShooting().Lift(context, w)
                problem.StateBytes
            Expect.equal (extraprop 800L - extraprop 400L) (400L * 4L * 8L * 8L) "ExtraProp grows by h, λ and their accumulators per example"
        }

        test "the variates are drawn once from the run's seed and stay fixed while training; redrawn, step k's come from the seed and k" {
            let program = mlp 6L [ 8L ] 3L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 6 40L 6L 3L
            let run seed (options: DistPropOptions) =
                use w = program.Initialise(2, CPU, f64)
                let context = LiftContext(program, dataset x y 3, CPU, f64, seed, constantRules 0.05, 0)
                use problem = DistProp(options).Lift(context, w)
                let before = (shared problem "variates1").clone()
                let batch = new Lifting.Data.MiniBatch(arange(40L, dtype = ScalarType.Int64), x, y)
                for _ in 1 .. 5 do
                    use game = problem.Batch(batch)
                    Solvers.Extragradient().Step(game)
                    game.Commit()
                // Two games on the same batch at the same variables.
                let objective () = use game = problem.Batch(batch) in game.Objective()
                let a = objective ()
                let b = objective ()
                before, (shared problem "variates1").clone(), a, b
            let before, after, a, b = run 3 (DistPropOptions(SamplesPerClass = 4, Multipliers = MultiplierPlacement.Class, ResampleVariates = false))
            Expect.equal ((after - before).abs().max().ToDouble()) 0.0 "unchanged by training"
            Expect.equal a b "two games at the same variables see the same samples"
            let again, _, _, _ = run 3 (DistPropOptions(SamplesPerClass = 4, ResampleVariates = false))
            Expect.equal ((again - before).abs().max().ToDouble()) 0.0 "the same seed draws the same variates"
            let other, _, _, _ = run 4 (DistPropOptions(SamplesPerClass = 4, ResampleVariates = false))
            Expect.isGreaterThan ((other - before).abs().max().ToDouble()) 0.0 "another seed draws others"
            let _, _, a', b' = run 3 (DistPropOptions(SamplesPerClass = 4, ResampleVariates = true))
            Expect.notEqual a' b' "redrawn: two steps see different samples"
            let _, _, a'', b'' = run 3 (DistPropOptions(SamplesPerClass = 4, ResampleVariates = true))
            Expect.equal (a'', b'') (a', b') "redrawn: step k's variates depend only on the seed and k"
        }

        test "pre-activation states move each hidden block's trailing activation into the next block: the same function, the same weights" {
            let program = Net.Input(5L).Dense(6L).Tanh().Dense(4L).ReLU().Dense(3L).CrossEntropy()
            let lifted = DistProp.LiftedProgram(program, DistPropOptions())
            Expect.equal (lifted.Blocks.[0].Layers |> Seq.map (fun l -> l.Name) |> List.ofSeq) [ "dense(5→6)" ] "block 1 ends before its tanh"
            Expect.equal (lifted.Blocks.[1].Layers |> Seq.map (fun l -> l.Name) |> List.ofSeq) [ "tanh"; "dense(6→4)" ] "the tanh opens block 2"
            Expect.equal (lifted.Blocks.[2].Layers |> Seq.map (fun l -> l.Name) |> List.ofSeq) [ "relu"; "dense(4→3)" ] "the relu opens block 3"
            use w = program.Initialise(3, CPU, f64)
            let x, _ = randomBatch 2 9L 5L 3L
            Expect.isLessThan (relativeError [ lifted.Forward(x, w.Tensors) ] [ program.Forward(x, w.Tensors) ]) 1e-15 "the same outputs"
            Expect.isTrue (Object.ReferenceEquals(DistProp.LiftedProgram(program, DistPropOptions(PreActivationStates = false)), program)) "off: the program itself"
            let seed001 = DistProp.LiftedProgram(Zoo.Seed001ConvDistProp([| 1L; 28L; 28L |], 10), DistPropOptions())
            Expect.equal (seed001.Blocks.[0].Layers |> Seq.last).Name "maxpool(k=2, s=2)" "seed001-conv-distprop's first block ends at the pooling"
            let img = randn([| 3L; 1L; 28L; 28L |], dtype = f64)
            use wc = Zoo.Seed001Conv([| 1L; 28L; 28L |], 10).Initialise(5, CPU, f64)
            Expect.isLessThan (relativeError [ seed001.Forward(img, wc.Tensors) ] [ Zoo.Seed001Conv([| 1L; 28L; 28L |], 10).Forward(img, wc.Tensors) ]) 1e-14
                "seed001-conv-distprop computes seed001-conv's function with its weights (ReLU and max-pooling commute)"
        }

        test "bad options and programs give one-line errors naming the value" {
            let ex = Expect.throwsC (fun () -> DistProp(DistPropOptions(Epsilon = -1.0)) |> ignore) id
            Expect.stringContains ex.Message "Invalid epsilon: -1" "ε"
            let ex = Expect.throwsC (fun () -> DistProp(DistPropOptions(SamplesPerClass = 0)) |> ignore) id
            Expect.stringContains ex.Message "Invalid samples per class: 0" "S"
            let ex = Expect.throwsC (fun () -> DistProp(DistPropOptions(FixedMeans = true, FixedScales = true)) |> ignore) id
            Expect.stringContains ex.Message "fixed means and fixed scales together" "nothing left to learn"
            let program = Net.Input(4L).Dense(3L).CrossEntropy()
            let x, y = randomBatch 1 5L 4L 3L
            use w = program.Initialise(1, CPU, f64)
            let context = LiftContext(program, dataset x y 3, CPU, f64, 0, constantRules 0.1, 0)
            let ex = Expect.throwsC (fun () -> DistProp().Lift(context, w) |> ignore) id
            Expect.stringContains ex.Message "at least two blocks" "one block"
            let ex = Expect.throwsC (fun () -> Methods.Resolve(MethodSettings("distprop").With("multipliers", "dataset")) |> ignore) id
            Expect.stringContains ex.Message "Invalid multipliers: 'dataset'" "placement"
        }

        test "a mini-batch step changes only its own rows of the per-example multipliers; per-class ones keep the store empty" {
            let program = mlp 3L [ 4L ] 2L Activations.ReLU Losses.CrossEntropy
            let x, y = randomBatch 9 10L 3L 2L
            use w = program.Initialise(1, CPU, f64)
            let context = LiftContext(program, dataset x y 2, CPU, f64, 0, Func<string, IStepRule>(fun _ -> StepRules.AdaGrad(0.1)), 0)
            use problem = DistProp(DistPropOptions(Epsilon = 0.0, Multipliers = MultiplierPlacement.Example)).Lift(context, w)
            let lambda = problem.Store.["lambda1"]
            let before = lambda.clone()
            let rows = tensor([| 2L; 7L; 4L |])
            let batch = new Lifting.Data.MiniBatch(rows, x.index_select(0L, rows), y.index_select(0L, rows))
            use game = problem.Batch(batch)
            Solvers.Extragradient().Step(game)
            game.Commit()
            let changed = (lambda - before).abs().sum(1L).gt(tensor(0.0, dtype = f64))
            for i in 0L .. 9L do
                Expect.equal (changed.[i].ToBoolean()) ([ 2L; 7L; 4L ] |> List.contains i) $"row {i}"
        }

        test "DistProp with seed 001's settings (distprop-seed001) trains the digits (late cut) to >= 0.9 test accuracy at the validation-selected epoch, keeping one multiplier row per example" {
            use result = digitsRun (MethodSettings "distprop-seed001") 15 0
            Expect.isGreaterThanOrEqual result.Selected.TestAccuracy 0.9 $"test accuracy {result.Selected.TestAccuracy}"
            Expect.equal result.PerExampleBytes (32L * 4L) "λ_1[i] ∈ ℝ³² per example, float32 (constant multiplier steps keep no state)"
            Expect.isGreaterThan result.StateBytes 0L "the Gaussians are state"
            Expect.isTrue (Double.IsFinite result.FinalDefect) "a finite z-score defect"
        }

        test "the retired distprop-tight (means at radius √H, λ-step 0.1, cosine schedule on seed 001's settings) holds the constraint: on the digits (late cut, 20 epochs) its final defect is under a quarter of distprop-seed001's, at >= 0.9 test accuracy" {
            use loose = digitsRun (MethodSettings "distprop-seed001") 20 0
            use tight = digitsRun (MethodSettings "distprop-tight") 20 0
            Expect.isLessThan tight.FinalDefect (loose.FinalDefect / 4.0) $"defects: distprop-tight {tight.FinalDefect}, distprop-seed001 {loose.FinalDefect}"
            Expect.isGreaterThanOrEqual tight.Selected.TestAccuracy 0.9 $"test accuracy {tight.Selected.TestAccuracy}"
        }

        test "the default distprop (σ held at 1, the former distprop-fixed-scale-adam) holds the constraint: on the digits (late cut, 20 epochs) its final defect is under a quarter of distprop-seed001's, at >= 0.9 test accuracy, σ_1 = 1 throughout; the retired names resolve to the same run" {
            use named = digitsRun (MethodSettings "distprop") 20 0
            use retired = digitsRun (MethodSettings "distprop-fixed-scale-adam") 20 0
            use spelled = digitsRun (MethodSettings("distprop-fixed-scale").With("optimizer", "adam").With("lr", 0.001)) 20 0
            use loose = digitsRun (MethodSettings "distprop-seed001") 20 0
            Expect.equal retired.FinalDefect named.FinalDefect "the retired name is the same run"
            Expect.equal spelled.FinalDefect named.FinalDefect "the same final defect as the spelled-out settings"
            Expect.sequenceEqual (named.Epochs |> Seq.map (fun e -> e.ValidationAccuracy)) (spelled.Epochs |> Seq.map (fun e -> e.ValidationAccuracy)) "the same validation accuracy every epoch"
            Expect.isLessThan named.FinalDefect (loose.FinalDefect / 4.0) $"defects: distprop {named.FinalDefect}, distprop-seed001 {loose.FinalDefect}"
            Expect.isGreaterThanOrEqual named.Selected.TestAccuracy 0.9 $"test accuracy {named.Selected.TestAccuracy}"
            for epoch in named.Epochs do
                Expect.floatClose Accuracy.high epoch.Diagnostics.["sigma1"] 1.0 $"σ_1 stays 1 (epoch {epoch.Epoch})"
        }

        test "a retired method name in the host is one line naming what it was" {
            let e = Expect.throwsC (fun () -> Methods.Find "distprop-tight" |> ignore) id
            Expect.stringContains e.Message "--method distprop-seed001 --feature-scale-means true --lr-multipliers 0.1 --schedule cosine" "the spelled-out settings"
            Expect.isFalse (Methods.All |> Seq.exists (fun m -> m.Name = "distprop-tight")) "not listed"
        }

        test "diagnostics: gap1 is the distance from each class's mean f_1(x) to μ_1(c), spread1 the within-class deviation, alignment1/opposed1 the cosine and sign of λ_i against g_ε(z_i), radius1/synthetic-radius1 the real and synthetic distances to μ_1, nearest-mean1 the fraction of f_1(x_i) nearest in z-score to μ_1(y_i), mean-accuracy the last block at the means" {
            let program = mlp 3L [ 4L ] 2L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 5 10L 3L 2L
            use w = program.Initialise(2, CPU, f64)
            let context = LiftContext(program, dataset x y 2, CPU, f64, 0, Func<string, IStepRule>(fun _ -> StepRules.AdaGrad(0.1)), 0)
            use problem = DistProp(DistPropOptions(Epsilon = 0.05)).Lift(context, w)
            let weights = w.Tensors |> Array.ofSeq
            // Pre-activation states: f_1 = W_1 x + b_1.
            let f1 = F.linear(x, weights.[0], weights.[1]).detach()
            let classMean (c: int64) = f1.index_select(0L, y.eq(tensor(c, dtype = ScalarType.Int64)).nonzero().squeeze(1L)).mean([| 0L |])
            let means = stack([| classMean 0L; classMean 1L |])
            let mu = shared problem "mu1"
            let offset = tensor([| 0.3; 0.0; 0.0; 0.4 |], dtype = f64)
            using (no_grad()) (fun _ -> mu.copy_(means + offset) |> ignore)
            let z = (f1 - mu.index_select(0L, y)) / F.softplus(shared problem "sigma1").index_select(0L, y)
            let g = F.softshrink(z, 0.05)
            let lambda = problem.Store.["lambda1"]
            let within = (f1 - means.index_select(0L, y)).square().mean().sqrt().ToDouble()
            for sign in [ 1.0; -1.0 ] do
                using (no_grad()) (fun _ -> lambda.copy_((sign * g).to_type(lambda.dtype)) |> ignore)
                let d = problem.Diagnostics
                Expect.floatClose Accuracy.medium d.["gap1"] 0.5 "‖(0.3, 0, 0, 0.4)‖ = 0.5 for both classes"
                Expect.floatClose Accuracy.medium d.["spread1"] within "root mean square of f_1(x) − its class mean"
                Expect.floatClose Accuracy.medium d.["alignment1"] sign "λ_i = ±g_ε(z_i): cosine ±1"
                Expect.floatClose Accuracy.medium d.["opposed1"] (if sign > 0.0 then 0.0 else 1.0) "the fraction of λ_i opposing their violation"
                Expect.isTrue (d.["synthetic-accuracy"] >= 0.0 && d.["synthetic-accuracy"] <= 1.0) "an accuracy"
            let d = problem.Diagnostics
            let radius = (f1 - mu.index_select(0L, y)).square().sum(1L).mean().sqrt().ToDouble()
            Expect.floatClose Accuracy.medium d.["radius1"] radius "root mean square of ‖f_1(x_i) − μ_1(y_i)‖"
            let sigma = F.softplus(shared problem "sigma1")
            let shell = (shared problem "variates1" * sigma.unsqueeze(1L)).square().sum(2L).mean().sqrt().ToDouble()
            Expect.floatClose Accuracy.medium d.["synthetic-radius1"] shell "root mean square of ‖e ⊙ σ_1(c)‖ over the samples"
            // The last block (tanh, then the output layer) at μ_1(0) and μ_1(1).
            let atMeans = F.linear(tanh(mu), weights.[2], weights.[3]).argmax(1L)
            let expected = atMeans.eq(tensor([| 0L; 1L |])).to_type(ScalarType.Float64).mean().ToDouble()
            Expect.floatClose Accuracy.medium d.["mean-accuracy"] expected "the last block's accuracy at the means themselves"
            // Nearest mean in z-score, class by class; swapping the two means swaps every answer.
            let nearestTo (m: Tensor) =
                let distance (c: int64) = ((f1 - m.[c]) / sigma.[c]).square().sum(1L)
                where((distance 0L).lt(distance 1L), tensor(0L), tensor(1L)).eq(y).to_type(ScalarType.Float64).mean().ToDouble()
            let nearest = nearestTo mu
            Expect.floatClose Accuracy.medium d.["nearest-mean1"] nearest "f_1(x_i) nearest to its own class's μ_1"
            using (no_grad()) (fun _ -> mu.copy_(mu.flip(0L)) |> ignore)
            Expect.floatClose Accuracy.medium problem.Diagnostics.["nearest-mean1"] (1.0 - nearest) "with the means swapped"
            Expect.isTrue (nearest > 0.0 && nearest < 1.0) $"the batch has examples on both sides ({nearest})"
        }

        test "distprop's default of not extrapolating the weights is moot with another solver; asked for explicitly, it is refused there" {
            let gda = Methods.Resolve(MethodSettings("distprop-seed001").With("solver", "gda"))
            Expect.stringContains gda.Solver.Name "gda" "the named solver, without weight extrapolation"
            let ex = Expect.throwsC (fun () -> Methods.Resolve(MethodSettings("distprop-seed001").With("solver", "gda").With("extrapolate-weights", false)) |> ignore) id
            Expect.stringContains ex.Message "extrapolate-weights=false applies to the extragradient solver, not 'gda'" "one line naming both"
            let default' = Methods.Resolve(MethodSettings "distprop")
            Expect.stringContains default'.Solver.Name "per-player extrapolation" "by default extragradient without the weights' extrapolation"
        }

        testSequenced <| test "DistProp training leaves no tensor behind, redrawing the variates or not, per class or per example" {
            let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
            for settings in [ MethodSettings "distprop"; MethodSettings("distprop-seed001").With("multipliers", "class").With("resample", false).With("extrapolate-weights", true) ] do
                (digitsRun settings 1 3).Dispose()
                let before = live ()
                (digitsRun settings 2 3).Dispose()
                Expect.equal (live ()) before $"{settings.Values.Count} changed settings: no tensor outlives the run"
        }
    ]
