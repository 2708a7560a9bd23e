module Lifting.Tests.AlternatingMinimisationTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
type Tensor = torch.Tensor
open Lifting
open Lifting.Data
open Lifting.Programs
open Lifting.Formulations
open Lifting.Solvers
open Lifting.Training
open Lifting.Tests.Support

let digits = lazy (DatasetCatalog.Load "digits")

let train (settings: MethodSettings) (program: NestedProgram) (options: TrainingOptions) =
    let m = Methods.Resolve(settings)
    Trainer.Train(program, digits.Force(), m.Formulation, m.Solver, m.StepRules, options)

let digitsMlp (hidden: int64 list) (activation: IActivation) =
    Net.Mlp(digits.Force().Train.ExampleShape, Array.ofList ([ 64L ] @ hidden @ [ 10L ]), activation, Losses.CrossEntropy)

let sameWeights (a: Weights) (b: Weights) =
    Seq.forall2 (fun (u: Tensor) (v: Tensor) -> u.eq(v).all().ToBoolean()) a.Tensors b.Tensors

/// The AM game of a whole batch, with constant weight steps and Nesterov code steps of `codeLr`.
let amGame (options: OnlineAlternatingMinimisationOptions) (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) classes codeLr =
    let rules = Func<string, IStepRule>(fun p -> if p = OnlineAlternatingMinimisation.CodesPlayer then StepRules.Momentum(codeLr, 0.9, true) else StepRules.Constant 0.1)
    let problem, game, _ = liftAll (OnlineAlternatingMinimisation(options)) program weights x y classes 0 rules
    problem, game, game :?> IAlternatingMinimisationGame

/// After one top-down code pass with one step per code: how far the codes moved from their forward
/// values, and each block's cosine between its weight direction and the backprop gradient.
///
/// A hidden block's direction is its residual Δc_l − ∂f_l·Δc_{l−1} times its input: as μ grows both
/// code moves shrink as 1/μ, but their ratio does not, so the lower code's move leaves a term of
/// relative size O(η(1+ρ)‖∂f‖²) in the limit. The code step η = 0.01 keeps it small; at η = 0.05 a
/// random net can stop at cosine 0.984 (docs/results/am-limit.md: 0.86–0.99 at η = 0.3).
let afterCodes (m: FormulationTests.SmallMlp) (mu: float) =
    let program = mlp m.Inputs m.Hidden m.Classes (FormulationTests.activationOf m.Activation) Losses.CrossEntropy
    let x, y = randomBatch m.Seed (m.Batch + 1L) m.Inputs m.Classes
    use weights = program.Initialise(m.Seed, torch.CPU, f64)
    let reference = backpropGradient program weights x y
    let problem, game, am = amGame (OnlineAlternatingMinimisationOptions(Mu = MuSchedule(mu))) program weights x y (int m.Classes) 0.01
    use _p = problem
    use _g = game
    let codes = game.Players.[1].Variables
    let forward = codes |> Seq.map (fun c -> c.detach().clone()) |> Array.ofSeq
    AlternatingMinimisationSolver().UpdateCodes(am)
    let moved = Seq.map2 (fun (c: Tensor) (f: Tensor) -> (c - f).abs().max().ToDouble()) codes forward |> Seq.max
    let cosines = am.WeightProblems() |> Seq.mapi (fun l p -> cosine (p.Direction.Invoke()) (program.BlockWeights(reference, l))) |> List.ofSeq
    moved, cosines

/// The authors' update_codes (seed 004's code), written out: top-down, each code descends
/// (1/μ)·(the loss, or μ times the code above's `mse_loss`) + `mse_loss`(c, c⁰), averaged over the batch
/// and (with `unitMean`) the units, or summed over the units, by one Nesterov step from a zero buffer,
/// c ← c − η_k(1 + 0.9)∇, with η_k = η·growth^k for the code k levels below the top.
let authorsCodes (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) (mu: float) (eta: float) (unitMean: bool) (growth: float) =
    use _ = torch.enable_grad()
    let splits = OnlineAlternatingMinimisation.Split program
    let hidden = splits.Count - 1
    let w = weights.Tensors
    let batch = float x.shape.[0]
    let distance (a: Tensor) (b: Tensor) = if unitMean then (a - b).square().mean() else (a - b).square().sum() / batch
    let forward = Array.zeroCreate<Tensor> hidden
    let mutable input = x
    for l in 0 .. hidden - 1 do
        forward.[l] <- splits.[l].ApplyLinear([| input |], w).detach()
        input <- splits.[l].ApplyActivation(forward.[l])
    let codes = Array.copy forward
    for l in hidden - 1 .. -1 .. 0 do
        let c = forward.[l].clone().requires_grad_(true)
        let above = splits.[l + 1].ApplyLinear([| splits.[l].ApplyActivation(c) |], w)
        let term =
            if l = hidden - 1 then program.Loss.PerExample(splits.[hidden].ApplyActivation(above), y).mean() / mu
            else distance above codes.[l + 1]
        let g = torch.autograd.grad([| term + distance c forward.[l] |], [| c |]).[0]
        codes.[l] <- (c - g * (eta * growth ** float (hidden - 1 - l) * 1.9)).detach()
    codes

/// The largest weight change of the lowest block, over the weights' step size, after one AM-Adam
/// iteration on a five-block float64 MLP with code step 1e-4: the lowest block's weight gradient is
/// about 2e-14 (its first step at ε 1e-8 is g/ε ≈ 1.9e-6 × lr), far below Adam's default ε.
let lowestBlockStep (adamEps: float option) =
    let program = mlp 16L [ 12L; 12L; 12L; 12L ] 4L Activations.Tanh Losses.CrossEntropy
    let x, y = randomBatch 3 32L 16L 4L
    use weights = program.Initialise(3, torch.CPU, f64)
    let before = program.BlockWeights(weights.Tensors, 0) |> Array.ofSeq |> Array.map (fun t -> t.detach().clone())
    let settings = MethodSettings("am-adam").With("lr-codes", 1e-4).With("lr", 0.01)
    let settings = match adamEps with Some e -> settings.With("adam-eps", e) | None -> settings
    let m = Methods.Resolve settings
    let problem, game, _ = liftAll m.Formulation program weights x y 4 m.Solver.MemorySlots m.StepRules
    use _p = problem
    use _g = game
    m.Solver.Step game
    let after = program.BlockWeights(weights.Tensors, 0)
    (Seq.map2 (fun (a: Tensor) (b: Tensor) -> (a - b).abs().max().ToDouble()) after before |> Seq.max) / 0.01

let smallMlps = Arb.fromGen FormulationTests.genSmallMlp
let config = { FsCheckConfig.defaultConfig with maxTest = 20; arbitrary = [] }

[<Tests>]
let tests =
    testList "AlternatingMinimisationTests" [
        testPropertyWithConfig config "as mu grows the codes stay at their forward values (moved ∝ 1/μ) and every block's weight direction approaches backprop's, cosine > 0.99 at μ = 1e4" <|
            Prop.forAll smallMlps (fun m ->
                let moved1, cos1 = afterCodes m 1.0
                let moved4, cos4 = afterCodes m 1e4
                // One code step from the forward values is linear in 1/μ.
                let proportional = abs (moved4 * 1e4 - moved1) <= 1e-6 * moved1 + 1e-12
                let close = cos4 |> List.forall (fun c -> c > 0.99)
                // The output block is fitted at the updated top code: backprop's exactly in the limit.
                let output = List.last cos4 >= List.last cos1 - 1e-9 && List.last cos4 > 0.999999
                (proportional && close && output) |> Prop.label $"moved {moved1} → {moved4}, cosines {cos1} → {cos4}")

        testCase "adam-eps reaches AM-Adam's weight rule: the lowest block of a five-block net, whose weight gradient is about 2e-14 at code step 1e-4, gets a full first Adam step (= lr) at ε 1e-20 in float64, under 1 % of it at the default ε 1e-8" <| fun () ->
            let tiny = lowestBlockStep (Some 1e-20)
            let damped = lowestBlockStep None
            Expect.isGreaterThan tiny 0.999 $"ε 1e-20: largest step {tiny} × lr"
            Expect.isLessThan tiny 1.001 $"ε 1e-20: largest step {tiny} × lr"
            Expect.isLessThan damped 0.01 $"ε 1e-8: largest step {damped} × lr"
        testPropertyWithConfig config "one top-down code pass equals the authors' update_codes (their step η = B × ours), residuals summed or averaged over the units (their mse_loss), code steps growing down the net" <|
            Prop.forAll smallMlps (fun m ->
                let program = mlp m.Inputs m.Hidden m.Classes (FormulationTests.activationOf m.Activation) Losses.CrossEntropy
                let batch = m.Batch + 1L
                let x, y = randomBatch m.Seed batch m.Inputs m.Classes
                use weights = program.Initialise(m.Seed, torch.CPU, f64)
                let mu, eta = 0.05, 0.5
                [ for residuals in [ ResidualScale.Sum; ResidualScale.UnitMean ] do
                    for growth in [ 1.0; 3.0 ] do
                        let expected = authorsCodes program weights x y mu eta (residuals = ResidualScale.UnitMean) growth
                        let options = OnlineAlternatingMinimisationOptions(Mu = MuSchedule(mu), Residuals = residuals, CodeStepGrowth = growth)
                        let problem, game, am = amGame options program weights x y (int m.Classes) (eta / float batch)
                        use _p = problem
                        use _g = game
                        AlternatingMinimisationSolver().UpdateCodes(am)
                        let error = relativeError game.Players.[1].Variables expected
                        yield (error < 1e-12) |> Prop.label $"{residuals}, growth {growth}: relative error {error}" ]
                |> List.reduce (.&.))

        test "a layer-parallel split of online AM is refused, naming why, where a block reads below its range's lower cut, where tied weights fall in two ranges, and under another solver" {
            let refusal (rp: Lifting.Testing.RandomProgram) (ranges: BlockRange list) (solver: ISolver) =
                use weights = rp.Initialise(rp.Seed)
                let problem, game, _ = liftAll (OnlineAlternatingMinimisation()) rp.Program weights rp.Inputs rp.Labels rp.Classes 0 (constantRules 0.1)
                use _p = problem
                use _g = game
                try
                    (problem :?> ILayerSplittable).Validate(ResizeArray ranges, solver)
                    None
                with :? ArgumentException as e -> Some e.Message
            let am = AlternatingMinimisationSolver()
            // A residual MLP with a skip across a cut: split just above a block that reads two blocks down.
            let skipAbove (rp: Lifting.Testing.RandomProgram) =
                let segments = rp.Program.Segments
                [ 0 .. segments.Count - 1 ] |> List.tryFind (fun l -> segments.[l].InputSegments |> Seq.exists (fun u -> u >= 0 && u < l - 1))
            let rp = Seq.initInfinite (fun s -> Lifting.Testing.RandomPrograms.ResidualGraph(2 * s, skipsAcrossCuts = true)) |> Seq.find (skipAbove >> Option.isSome)
            let n = rp.Program.Segments.Count
            let l = (skipAbove rp).Value
            Expect.equal (refusal rp [ BlockRange(0, n) ] am) None "one range: nothing crosses"
            match refusal rp [ BlockRange(0, l); BlockRange(l, n) ] am with
            | Some m -> Expect.stringContains m "below the range's lower cut" "says why"
            | None -> failtest "a skip across the ranges' cut is refused"
            // An Elman RNN: every step's cell shares its weights.
            let rnn = Lifting.Testing.RandomPrograms.RecurrentGraph(1)
            let m = rnn.Program.Segments.Count
            match refusal rnn [ BlockRange(0, m / 2); BlockRange(m / 2, m) ] am with
            | Some msg -> Expect.stringContains msg "share weights" "says why"
            | None -> failtest "tied weights over two ranges are refused"
            match refusal rp [ BlockRange(0, n) ] (Solvers.GradientDescentAscent()) with
            | Some msg -> Expect.stringContains msg "alternating-minimisation solver only" "says why"
            | None -> failtest "another solver is refused"
        }

        test "the straight-through sign has sign's values bit for bit and hard-tanh's derivative" {
            let x = torch.tensor([| -2.0; -0.7; -0.0; 0.3; 1.0; 1.5 |], dtype = f64).requires_grad_(true)
            let y = Activations.SignSte.Apply(x)
            Expect.isTrue (y.detach().eq(x.detach().sign()).all().ToBoolean()) "values of sign"
            Expect.isTrue y.requires_grad "back-propagation reaches x through the surrogate"
            let g = torch.autograd.grad([| y.sum() |], [| x |]).[0]
            Expect.sequenceEqual (g.data<float>().ToArray()) [| 0.0; 1.0; 1.0; 1.0; 1.0; 0.0 |] "1[|x| ≤ 1]"
            let step = Activations.StepSte.Apply(x)
            Expect.isTrue (step.detach().eq(Activations.Step.Apply(x.detach())).all().ToBoolean()) "values of step"
            Expect.isFalse Activations.SignSte.Differentiable "still a step"
            Expect.equal (Activations.StraightThrough Activations.Tanh) Activations.Tanh "differentiable activations are left alone"
        }

        test "Nesterov momentum: b ← ρb + g, d = α(g + ρb); heavy ball d = αb" {
            let g1, g2 = torch.tensor([| 1.0; -2.0 |], dtype = f64), torch.tensor([| 0.5; 0.5 |], dtype = f64)
            for nesterov in [ true; false ] do
                let rule = StepRules.Momentum(0.1, 0.9, nesterov)
                let state = rule.Init(g1, false)
                let d1 = rule.Displacement(g1, state)
                let d2 = rule.Displacement(g2, state)
                let b1, b2 = g1, 0.9 * g1 + g2
                let e1, e2 = (if nesterov then 0.1 * (g1 + 0.9 * b1), 0.1 * (g2 + 0.9 * b2) else 0.1 * b1, 0.1 * b2)
                Expect.isLessThan (relativeError [ d1; d2 ] [ e1; e2 ]) 1e-14 $"nesterov = {nesterov}"
        }

        test "each block splits into a linear part, whose output is the code, and an activation part: LeNet-5's codes are the convolutions' outputs" {
            let splits = OnlineAlternatingMinimisation.Split(Zoo.LeNet5([| 1L; 28L; 28L |], 10))
            Expect.equal [ for s in splits -> List.ofArray s.CodeShape ] [ [ 6L; 28L; 28L ]; [ 16L; 10L; 10L ]; [ 120L ]; [ 84L ]; [ 10L ] ] "conv1, conv2, dense120, dense84, output"
            Expect.equal [ for s in splits -> s.Linear |> Seq.map (fun l -> l.Name) |> String.concat " " ]
                [ "conv2d(1→6, k=5, s=1, p=2)"; "maxpool(k=2, s=2) conv2d(6→16, k=5, s=1, p=0)"; "maxpool(k=2, s=2) flatten dense(400→120)"; "dense(120→84)"; "dense(84→10)" ] "pooling belongs to the next block's linear part"
            Expect.equal [ for s in splits -> s.Activation |> Seq.map (fun l -> l.Name) |> String.concat " " ] [ "relu"; "relu"; "relu"; "relu"; "" ] "the activations"
            let sign = OnlineAlternatingMinimisation.Split(digitsMlp [ 16L ] Activations.Sign)
            Expect.equal sign.[0].Activation.[0].Name "sign-ste" "a step is differentiated through its straight-through surrogate"
            Expect.isTrue sign.[0].StepActivation "and marked as a step"
        }

        test "AM-Adam trains the digits MLP 64-64-64-10 to >= 0.94 test accuracy at the validation-selected epoch in 10 epochs" {
            use result = train (MethodSettings "am-adam") (digitsMlp [ 64L; 64L ] Activations.ReLU) (TrainingOptions(Epochs = 10, BatchSize = 64))
            Expect.isGreaterThanOrEqual result.Selected.TestAccuracy 0.94 $"test accuracy {result.Selected.TestAccuracy}"
        }

        test "nothing is stored per example: no state for AM-Adam, only the co-activation memories (per block) for AM-mem" {
            let program = digitsMlp [ 32L; 16L ] Activations.ReLU
            use adam = train (MethodSettings "am-adam") program (TrainingOptions(Epochs = 1))
            Expect.equal adam.StateBytes 0L "AM-Adam keeps nothing between mini-batches"
            Expect.equal adam.PerExampleBytes 0L "nothing per example"
            use mem = train (MethodSettings "am-mem") program (TrainingOptions(Epochs = 1))
            // A_l is (in+1)², B_l is out × (in+1), float32, for the blocks 64 → 32 and 32 → 16.
            let expected = 4L * (65L * 65L + 32L * 65L + 33L * 33L + 16L * 33L)
            Expect.equal mem.StateBytes expected "the memories, whatever the number of examples"
            Expect.equal mem.PerExampleBytes 0L "nothing per example"
        }

        test "layer-parallel weight updates give weights bit-identical to the sequential order, also at one LibTorch thread (AM-Adam on an MLP and a conv net, AM-mem)" {
            // LibTorch's intra-op thread count is per OS thread: at one thread (the host's
            // --threads 1, set by earlier tests in a full run) the blocks' own threads started at
            // the machine's default and split the conv net's reductions differently, until the
            // solver gave them the caller's count. Restored afterwards.
            let before = Threads.Count
            Threads.Set 1
            try
                let conv = NetSpec.Build("conv:4:3:1:1, relu, maxpool:2, dense:32, relu, dense:10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy)
                for name, program in [ "am-adam", digitsMlp [ 48L; 32L ] Activations.Tanh; "am-adam", conv; "am-mem", digitsMlp [ 32L; 16L ] Activations.ReLU ] do
                    let run concurrently =
                        train (MethodSettings(name).With("parallel", concurrently).With("weight-steps", (if name = "am-adam" then 2 else 1)))
                            program (TrainingOptions(Epochs = 2, BatchSize = 128, Seed = 3))
                    use sequential = run false
                    use concurrent = run true
                    Expect.isTrue (sameWeights sequential.Weights concurrent.Weights) $"{name} on {program}: bit-identical weights"
            finally
                Threads.Set before
        }

        test "mu schedule: + increment after every mini-batch, capped; × multiplier after every epoch, capped" {
            let program = mlp 3L [ 4L ] 2L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 32 4L 3L 2L
            use w = program.Initialise(1, torch.CPU, f64)
            let options = OnlineAlternatingMinimisationOptions(Mu = MuSchedule(0.5, 0.25, 1.5, 1.25))
            let problem, game, _ = amGame options program w x y 2 0.1
            use _p = problem
            game.Dispose()
            let batch () = new MiniBatch(torch.arange(4L, dtype = torch.ScalarType.Int64), x, y)
            let mu () = problem.Diagnostics.["mu"]
            let seen = ResizeArray [ mu () ]
            for epoch in 1 .. 2 do
                for _ in 1 .. 2 do
                    use g = problem.Batch(batch ())
                    g.Commit()
                    seen.Add(mu ())
                problem.EndEpoch(epoch)
                seen.Add(mu ())
            // 0.5 → +0.25 → 1.0 (epoch: ×1.5 → 1.5, capped at 1.25) → +0.25 capped … exact binary fractions
            Expect.equal (List.ofSeq seen) [ 0.5; 0.75; 1.0; 1.25; 1.25; 1.25; 1.25 ] "batch-wise increments and the epoch multiplier, both capped at 1.25"
            let uncapped = OnlineAlternatingMinimisationOptions(Mu = MuSchedule(0.125, 0.125, 2.0)).Mu
            Expect.equal (uncapped.AfterEpoch(uncapped.AfterBatch 0.125)) 0.5 "(0.125 + 0.125) × 2"
        }

        test "mu schedule in training: the trainer's epochs see + increment per mini-batch, × multiplier per epoch; offline increments once per epoch" {
            // digits: 1294 training examples after the validation split, batch 500 → 3 mini-batches
            // per epoch; exact binary fractions.
            let settings (name: string) = MethodSettings(name).With("mu", 0.125).With("mu-increment", 0.0625).With("mu-multiplier", 2.0).With("mu-max", 1.0)
            use online = train (settings "am-adam") (digitsMlp [ 16L ] Activations.ReLU) (TrainingOptions(Epochs = 3, BatchSize = 500))
            Expect.equal [ for e in online.Epochs -> e.Diagnostics.["mu"] ] [ 0.625; 1.0; 1.0 ] "(0.125 + 3 × 0.0625) × 2, then capped"
            use offline = train (settings "am-adam-off") (digitsMlp [ 16L ] Activations.ReLU) (TrainingOptions(Epochs = 3, BatchSize = 500))
            Expect.equal [ for e in offline.Epochs -> e.Diagnostics.["mu"] ] [ 0.375; 0.875; 1.0 ] "(μ + 0.0625) × 2 once per epoch, capped"
        }

        test "the code sub-problem sees μ: the top code moves by −(η(1+ρ)/μ)·∂ℓ/∂c in its first Nesterov step" {
            let program = mlp 4L [ 5L; 3L ] 3L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 31 6L 4L 3L
            use w = program.Initialise(2, torch.CPU, f64)
            let mu = 0.5
            let problem, game, am = amGame (OnlineAlternatingMinimisationOptions(Mu = MuSchedule(mu))) program w x y 3 0.1
            use _p = problem
            use _g = game
            let top = game.Players.[1].Variables.[1]
            let before = top.detach().clone()
            let expected =
                use _ = torch.enable_grad()
                let c = before.clone().requires_grad_(true)
                let loss = program.Loss.PerExample(program.ForwardBlock(2, torch.tanh(c), w.Block(2)), y).sum()
                -(0.1 * 1.9 / mu) * torch.autograd.grad([| loss |], [| c |]).[0]
            // The top code is visited first, so the lower codes' steps do not change its update.
            AlternatingMinimisationSolver().UpdateCodes(am)
            Expect.isLessThan (relativeError [ top - before ] [ expected ]) 1e-12 "Δc = −η(1 + ρ)/μ ∇ℓ"
        }

        test "AM-mem's block-coordinate descent converges to the least-squares weights B A⁻¹" {
            use g = new torch.Generator(8UL)
            let a = torch.randn([| 50L; 6L |], dtype = f64, generator = g)
            let augmented = torch.cat([| a; torch.ones(50L, 1L, dtype = f64) |], 1L)
            let codes = torch.randn([| 50L; 4L |], dtype = f64, generator = g)
            let memory = CoActivationMemory(augmented.t().mm(augmented), codes.t().mm(augmented))
            let weight, bias = torch.zeros(4L, 6L, dtype = f64), torch.zeros(4L, dtype = f64)
            AlternatingMinimisationSolver.CoordinateDescent([| weight; bias |], memory, 200)
            let solution = torch.linalg.solve(memory.A, memory.B.t()).t()
            Expect.isLessThan (relativeError [ weight; bias ] [ solution.narrow(1L, 0L, 6L); solution.select(1L, 6L) ]) 1e-8 "W̃ = B A⁻¹"
            let once = torch.zeros(4L, 7L, dtype = f64)
            AlternatingMinimisationSolver.CoordinateDescent([| once |], CoActivationMemory(augmented.t().mm(augmented), codes.t().mm(augmented)), 1)
            let objective (w: Tensor) = 0.5 * (w.mm(memory.A).mm(w.t())).trace().ToDouble() - (w.mm(memory.B.t())).trace().ToDouble()
            Expect.isLessThan (objective once) (objective (torch.zeros(4L, 7L, dtype = f64))) "one sweep lowers the surrogate"
        }

        test "one block-coordinate sweep as a triangular solve gives the column-by-column updates; a dead input's column stays" {
            use g = new torch.Generator(9UL)
            let a = torch.randn([| 40L; 5L |], dtype = f64, generator = g)
            a.select(1L, 2L).zero_() |> ignore // an input that never fires
            let augmented = torch.cat([| a; torch.ones(40L, 1L, dtype = f64) |], 1L)
            let codes = torch.randn([| 40L; 3L |], dtype = f64, generator = g)
            let memory = CoActivationMemory(augmented.t().mm(augmented), codes.t().mm(augmented))
            let start = torch.randn([| 3L; 6L |], dtype = f64, generator = g)
            let loop = start.clone()
            for _ in 1 .. 2 do
                for j in 0L .. 5L do
                    let ajj = memory.A.[j, j].ToDouble()
                    if ajj > 0.0 then
                        let delta = (memory.B.select(1L, j) - loop.mv(memory.A.select(1L, j))) / ajj
                        loop.select(1L, j).add_(delta) |> ignore
            let weight, bias = start.narrow(1L, 0L, 5L).clone(), start.select(1L, 5L).clone()
            AlternatingMinimisationSolver.CoordinateDescent([| weight; bias |], memory, 2)
            Expect.isLessThan (relativeError [ weight; bias ] [ loop.narrow(1L, 0L, 5L); loop.select(1L, 5L) ]) 1e-12 "two sweeps, same iterates"
            Expect.isTrue (weight.select(1L, 2L).eq(start.select(1L, 2L)).all().ToBoolean()) "the dead input's column is untouched"
        }

        test "offline AM is one iteration per epoch over the whole training set, whatever the trainer's mini-batch size" {
            let program = digitsMlp [ 24L; 16L ] Activations.ReLU
            for name in [ "am-adam-off"; "am-mem-off" ] do
                use chunks = train (MethodSettings name) program (TrainingOptions(Epochs = 2, BatchSize = 100))
                use whole = train (MethodSettings name) program (TrainingOptions(Epochs = 2, BatchSize = 2000))
                let err = relativeError chunks.Weights.Tensors whole.Weights.Tensors
                Expect.isLessThan err 1e-4 $"{name}: chunks of 100 and one batch of 1294 agree to float32 summation order ({err})"
                use initial = program.Initialise(0)
                Expect.isGreaterThan (relativeError chunks.Weights.Tensors initial.Tensors) 1e-3 $"{name}: the weights moved"
            let ex = Expect.throwsC (fun () -> train (MethodSettings "am-adam-off") program (TrainingOptions(Epochs = 1, IterationsPerBatch = 2)) |> ignore) id
            Expect.stringContains ex.Message "one iteration" "offline AM refuses a second iteration on a chunk"
        }

        test "sign nets train: AM-Adam on 64-64(sign)-64(tanh)-10 reaches >= 0.85 test accuracy on digits, the straight-through backprop baseline too" {
            let program = NetSpec.Build("dense:64, sign, dense:64, tanh, dense:10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy)
            use am = train (MethodSettings "am-adam") program (TrainingOptions(Epochs = 10, BatchSize = 64))
            Expect.isGreaterThanOrEqual am.Selected.TestAccuracy 0.85 $"AM-Adam {am.Selected.TestAccuracy}"
            use hinge = train (MethodSettings("am-adam").With("step-blocks", "hinge")) program (TrainingOptions(Epochs = 10, BatchSize = 64))
            Expect.isGreaterThanOrEqual hinge.Selected.TestAccuracy 0.85 $"AM-Adam, hinge to the codes' signs {hinge.Selected.TestAccuracy}"
            let ste = NetSpec.Build("dense:64, sign-ste, dense:64, tanh, dense:10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy)
            use backprop = train (MethodSettings "backprop") ste (TrainingOptions(Epochs = 10, BatchSize = 64))
            Expect.isGreaterThanOrEqual backprop.Selected.TestAccuracy 0.85 $"straight-through backprop {backprop.Selected.TestAccuracy}"
            use w0 = program.Initialise(0)
            let first (r: TrainingResult) = relativeError [ r.Weights.Tensors.[0] ] [ w0.Tensors.[0] ]
            Expect.isGreaterThan (first am) 1e-2 "AM trains the sign layer's weights"
        }

        testSequenced <| test "alternating minimisation leaves no tensor behind: the live count returns to where it was" {
            let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
            let program = digitsMlp [ 16L; 16L ] Activations.ReLU
            for settings in [ MethodSettings "am-adam"; MethodSettings("am-adam").With("parallel", true).With("code-steps", 3); MethodSettings "am-mem"; MethodSettings "am-adam-off"; MethodSettings "am-mem-off" ] do
                (train settings program (TrainingOptions(Epochs = 1))).Dispose()
                let before = live ()
                (train settings program (TrainingOptions(Epochs = 2))).Dispose()
                Expect.equal (live ()) before $"{settings.Method} {settings.Values.Count}: no tensor outlives the run"
        }

        test "bad settings are refused with a message naming them" {
            let ex = Expect.throwsC (fun () -> MuSchedule(0.1, -1.0).Validate()) id
            Expect.stringContains ex.Message "Invalid mu increment: -1" "increment"
            let ex = Expect.throwsC (fun () -> AlternatingMinimisationSolver(AlternatingMinimisationSolverOptions(CodeSteps = 0)) |> ignore) id
            Expect.stringContains ex.Message "Invalid code steps: 0" "code steps"
            let ex = Expect.throwsC (fun () -> Methods.Resolve(MethodSettings("am-mem").With("momentum", 1.0)) |> ignore) id
            Expect.stringContains ex.Message "Invalid momentum" "momentum"
            let conv = NetSpec.Build("conv:4:3, relu, maxpool:2, dense:10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy)
            let ex = Expect.throwsC (fun () -> train (MethodSettings "am-mem") conv (TrainingOptions(Epochs = 1)) |> ignore) id
            Expect.stringContains ex.Message "AM-mem needs" "AM-mem needs fully connected blocks"
        }
    ]
