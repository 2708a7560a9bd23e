module Lifting.Tests.StepRuleTests

open System
open Expecto
open TorchSharp
open Lifting
open Lifting.Solvers
open Lifting.Formulations
open Lifting.Tests.SolverTests
type Tensor = torch.Tensor

/// A small regression in float64 over two tensors (so a global-norm clip has more than one to
/// clip): L(W, b) = Σ (tanh(X Wᵀ + b) − Y)² / 2 + 0.1 Σ W².
let private problem () =
    use g = new torch.Generator(7UL)
    let x = torch.randn([| 8L; 4L |], dtype = f64, generator = g)
    let y = torch.randn([| 8L; 5L |], dtype = f64, generator = g)
    let w = torch.randn([| 5L; 4L |], dtype = f64, generator = g)
    let b = torch.randn([| 5L |], dtype = f64, generator = g)
    let loss (w: Tensor) (b: Tensor) = 0.5 * (torch.tanh(x.matmul(w.t()) + b) - y).square().sum() + 0.1 * w.square().sum()
    w, b, loss

/// The iterates of `rule` through Lifting's GDA solver against those of a TorchSharp optimiser on
/// the same problem, `steps` steps, with the epoch advanced (and the TorchSharp scheduler stepped)
/// every `perEpoch` steps; the largest difference over all steps.
let private against (rule: IStepRule) (optimiser: Modules.Parameter[] -> torch.optim.Optimizer) (scheduler: torch.optim.Optimizer -> torch.optim.lr_scheduler.LRScheduler option)
                    (clip: float option) steps perEpoch epochs =
    let w0, b0, loss = problem ()
    let vars = [| w0.clone().requires_grad_(true); b0.clone().requires_grad_(true) |]
    let player = Player("weights", Role.Minimise, vars, rule, [| for v in vars -> rule.Init(v, false) |])
    let game = FunctionGame([ player ], fun vs -> loss vs.[0] vs.[1])
    let solver = Solvers.GradientDescentAscent()
    let reference = [| new Modules.Parameter(w0.clone()); new Modules.Parameter(b0.clone()) |]
    let opt = optimiser reference
    let sched = scheduler opt
    let mutable worst = 0.0
    for k in 0 .. steps - 1 do
        if k % perEpoch = 0 then
            match rule with :? IScheduledStepRule as s -> s.Advance(k / perEpoch + 1, epochs) | _ -> ()
        solver.Step game
        opt.zero_grad()
        (loss reference.[0] reference.[1]).backward()
        clip |> Option.iter (fun c -> torch.nn.utils.clip_grad_norm_(reference, c) |> ignore)
        opt.step() |> ignore
        if (k + 1) % perEpoch = 0 then sched |> Option.iter (fun s -> s.step())
        for i in 0 .. 1 do worst <- max worst ((vars.[i] - reference.[i]).abs().max().ToDouble())
    worst

[<Tests>]
let tests =
    let settings lr = StepRuleSettings(lr)
    let create name (s: StepRuleSettings) = StepRuleCatalog.Create(name, s)
    testList "StepRuleTests" [
        test "momentum, nesterov, Adam with its betas and ε, AdamW, a global-norm clip and a step decay take TorchSharp's optimisers' iterates" {
            let cases : (string * IStepRule * (Modules.Parameter[] -> torch.optim.Optimizer) * (torch.optim.Optimizer -> torch.optim.lr_scheduler.LRScheduler option) * float option) list = [
                "momentum", create "momentum" (StepRuleSettings(0.05, Beta1 = 0.8)),
                    (fun p -> torch.optim.SGD(p, 0.05, momentum = 0.8) :> _), (fun _ -> None), None
                "nesterov", create "nesterov" (StepRuleSettings(0.05, Beta1 = 0.7)),
                    (fun p -> torch.optim.SGD(p, 0.05, momentum = 0.7, nesterov = true) :> _), (fun _ -> None), None
                "adam β=(0.8, 0.99) ε=1e-6", create "adam" (StepRuleSettings(0.02, Beta1 = 0.8, Beta2 = 0.99, Eps = 1e-6)),
                    (fun p -> torch.optim.Adam(p, 0.02, beta1 = 0.8, beta2 = 0.99, eps = 1e-6) :> _), (fun _ -> None), None
                "adamw", create "adamw" (settings 0.02),
                    (fun p -> torch.optim.AdamW(p, 0.02, weight_decay = 0.01) :> _), (fun _ -> None), None
                "adamw λ=0.3", create "adamw" (StepRuleSettings(0.02, WeightDecay = Nullable 0.3)),
                    (fun p -> torch.optim.AdamW(p, 0.02, weight_decay = 0.3) :> _), (fun _ -> None), None
                "adam after a clip to norm 0.5", StepRules.ClippedByGlobalNorm(create "adam" (settings 0.02), 0.5),
                    (fun p -> torch.optim.Adam(p, 0.02) :> _), (fun _ -> None), Some 0.5
                "nesterov ×0.5 every epoch (StepLR)", Schedules.StepDecay(create "nesterov" (settings 0.05), 1, 0.5),
                    (fun p -> torch.optim.SGD(p, 0.05, momentum = 0.9, nesterov = true) :> _), (fun o -> Some(torch.optim.lr_scheduler.StepLR(o, 1, 0.5))), None
                "adamw ×0.5 every 2 epochs, clipped to 1", Schedules.StepDecay(StepRules.ClippedByGlobalNorm(create "adamw" (settings 0.05), 1.0), 2, 0.5),
                    (fun p -> torch.optim.AdamW(p, 0.05, weight_decay = 0.01) :> _), (fun o -> Some(torch.optim.lr_scheduler.StepLR(o, 2, 0.5))), Some 1.0
            ]
            for (label, rule, optimiser, scheduler, clip) in cases do
                let worst = against rule (fun p -> optimiser p) scheduler clip 12 3 4
                Expect.isLessThan worst 1e-12 $"{label}: largest difference to TorchSharp's iterates"
        }
        test "the clip rescales only when the global norm is above it, and by c / (‖g‖ + 1e-6)" {
            let rule = StepRules.ClippedByGlobalNorm(StepRules.Constant 1.0, 5.0)
            let g = [| torch.tensor([| 3.0; 0.0 |], dtype = f64); torch.tensor([| 4.0 |], dtype = f64) |]
            let out = rule.Directions(g)
            Expect.floatClose Accuracy.veryHigh (out.[0].[0].ToDouble()) (3.0 * 5.0 / (5.0 + 1e-6)) "‖g‖ = 5 is just above 5 / (1 + 1e-6)·‖g‖"
            let small = StepRules.ClippedByGlobalNorm(StepRules.Constant 1.0, 10.0).Directions(g)
            Expect.isTrue (Object.ReferenceEquals(small.[0], g.[0])) "below the norm the directions pass unchanged"
        }
        test "warm-up scales epoch e of W by e/(W+1) and multiplies the schedule it wraps" {
            let rule = Schedules.Warmup(Schedules.StepDecay(StepRules.Constant 1.0, 2, 0.5), 3)
            let v = torch.zeros([| 1L |], dtype = f64)
            let state = rule.Init(v, false)
            let g = torch.ones([| 1L |], dtype = f64)
            for (epoch, factor) in [ 1, 0.25; 2, 0.5; 3, 0.75 * 0.5; 4, 0.5; 5, 0.25 ] do
                rule.Advance(epoch, 5)
                Expect.floatClose Accuracy.veryHigh (rule.Displacement(g, state, v).[0].ToDouble()) factor $"epoch {epoch}"
            // The trainer advances the outermost rule only: a cosine schedule passes the epoch on.
            let nested = Schedules.Cosine(Schedules.Warmup(StepRules.Constant 1.0, 1))
            let nestedState = nested.Init(v, false)
            nested.Advance(1, 3)
            Expect.floatClose Accuracy.veryHigh (nested.Displacement(g, nestedState, v).[0].ToDouble()) 0.5 "cosine 1 × warm-up 1/2 in epoch 1"
        }
        test "decoupled weight decay needs the variable and refuses a negative λ" {
            let rule = StepRules.WithDecoupledWeightDecay(StepRules.Constant 0.1, 0.1, 0.5)
            let v = torch.ones([| 2L |], dtype = f64)
            let state = rule.Init(v, false)
            Expect.throwsC (fun () -> rule.Displacement(torch.zeros_like(v), state) |> ignore) (fun e -> Expect.stringContains e.Message "variable" "names what is missing")
            Expect.floatClose Accuracy.veryHigh (rule.Displacement(torch.zeros_like(v), state, v).[0].ToDouble()) 0.05 "d = α λ w at g = 0"
            Expect.throwsC (fun () -> StepRules.WithDecoupledWeightDecay(StepRules.Constant 0.1, 0.1, -1.0) |> ignore) (fun e -> Expect.stringContains e.Message "-1" "names the value")
        }
        test "every method's weights take --optimizer adamw, --weight-decay, --clip-norm, --warmup and --decay-every; the defaults build the plain rule" {
            let plain = Methods.Resolve(MethodSettings("backprop"))
            Expect.equal (plain.StepRules.Invoke(PlayerNames.Weights).Name) "adam(lr=0.001, β=(0.9, 0.999))" "the default is Adam alone"
            let m = Methods.Resolve(MethodSettings("am-adam").With("optimizer", "adamw").With("clip-norm", 2.0).With("warmup", 2).With("decay-every", 3))
            let name = m.StepRules.Invoke(PlayerNames.Weights).Name
            for part in [ "adam(lr=0.001"; "decoupled weight decay 0.01"; "clip(‖g‖ ≤ 2)"; "every 3 epoch(s)"; "warm-up over 2 epoch(s)" ] do
                Expect.stringContains name part "the rule says what it is"
            let ignored = Expect.throwsC (fun () -> Methods.Resolve(MethodSettings("backprop").With("optimizer", "adagrad").With("beta1", 0.5)) |> ignore) id
            Expect.stringContains ignored.Message "beta1 does not apply to the weights' step rule 'adagrad'" "a setting the rule would ignore is refused, naming both"
            let eps = Expect.throwsC (fun () -> Methods.Resolve(MethodSettings("backprop").With("optimizer", "momentum").With("adam-eps", 1e-6)) |> ignore) id
            Expect.stringContains eps.Message "adam, adamw" "and says which rules take it"
            let fa = Methods.Resolve(MethodSettings("fa").With("optimizer", "momentum").With("beta1", 0.5).With("lr", 0.01))
            Expect.stringContains (fa.StepRules.Invoke(PlayerNames.Weights).Name) "momentum(lr=0.01, ρ=0.5)" "beta1 is the momentum"
        }
    ]
