/// The TorchSharp Scalar race (docs/engine.md, "A TorchSharp race: implicit Scalars"): no Scalar
/// temporaries left in the library's compiled code, the replacements compute the same bits as the
/// operators they replace, and every family trains beside a thread that forces garbage collections.
/// Also the reused buffers of the hot loop (issue 26): Adam's workspace and host-side count, and
/// the in-place 1/B of a batch game's gradients.
module Lifting.Tests.ScalarRaceTests

open System
open System.Threading
open Expecto
open TorchSharp
open type TorchSharp.torch
open Lifting
open Lifting.Data
open Lifting.Formulations
open Lifting.Solvers
open Lifting.Testing
open Lifting.Training
open Lifting.Tests.Support

/// A deliberate temporary for the audit to find (`t * 0.5` makes one inside TorchSharp).
let halfOf (t: Tensor) = t * 0.5

let private assemblyOf (t: Type) = t.Assembly.Location

/// Runs `work` while another thread allocates and forces full collections (and finalisers)
/// without pause: a Scalar finalised during a native call would free its value while LibTorch
/// reads it. Returns how many collections ran beside the work.
let underGcPressure (work: unit -> unit) =
    use stop = new ManualResetEventSlim(false)
    let mutable collections = 0
    let pressure =
        Thread((fun () ->
            while not stop.IsSet do
                let junk = Array.init 64 (fun i -> Array.zeroCreate<byte> (1024 * (i % 8 + 1)))
                GC.KeepAlive junk
                GC.Collect()
                GC.WaitForPendingFinalizers()
                Interlocked.Increment(&collections) |> ignore), IsBackground = true)
    pressure.Start()
    try work ()
    finally
        stop.Set()
        pressure.Join()
    collections

let digits = lazy (DatasetCatalog.Load "digits")

/// One method of every family, each on the digits MLP for one epoch.
let families = [ "backprop"; "extraprop"; "penalty"; "distprop"; "am-adam"; "pcn"; "fenchel-bp"; "fa" ]

let trainEpochs (epochs: int) (name: string) =
    let data = digits.Force()
    let program = Lifting.Programs.Net.Input(data.Train.ExampleShape).Flatten().Dense(32).ReLU().Dense(10).CrossEntropy()
    let m = Methods.Resolve(MethodSettings(name))
    use result = Trainer.Train(program, data, m.Formulation, m.Solver, m.StepRules, TrainingOptions(Epochs = epochs, BatchSize = 64, Seed = 3))
    result.Selected.TestAccuracy

let trainOneEpoch (name: string) = trainEpochs 1 name

/// A batch game whose two shared variables receive one and the same gradient tensor from
/// autograd (the two inputs of a sum): Σ_i L_i = Σ (w1 + w2) ⊙ c.
type private TwinGame(batch: MiniBatch, w1: Tensor, w2: Tensor, c: Tensor) =
    inherit BatchGame(batch)
    let players =
        [| Player("weights", Role.Minimise, [| w1; w2 |], StepRules.Constant(1.0), [| StepState.Empty; StepState.Empty |]) |]
    override _.Players = players
    override _.EvaluateSum() = ((w1.Plus(w2)) * c).sum()
    override _.Commit() = ()

[<Tests>]
let tests =
    testList "ScalarRaceTests" [
        test "the audit finds the temporary TorchSharp makes for t * 0.5, and none in Lifting.Core, Lifting.Host, Lifting.FSharp or Lifting.Distributed" {
            let own = ScalarAudit.Sites(assemblyOf typeof<TwinGame>)
            Expect.exists own (fun s -> s.Method.Contains "halfOf" && s.Callee.Contains "op_Multiply") "t * 0.5 in this test assembly is found"
            // Upstream, accepted: TorchSharp's SummaryWriter.add_histogram (the host's TensorBoard
            // observer, once per weight tensor per epoch) makes its temporaries inside TorchSharp.
            let upstream = [ "TorchSharp.Modules.SummaryWriter::add_histogram(" ]
            for t in [ typeof<Lifting.Scalars>; typeof<Lifting.Host.Cli>; typeof<Lifting.FSharp.Layers>; typeof<Lifting.Distributed.DataParallelPlan> ] do
                let sites = ScalarAudit.Sites(assemblyOf t) |> Seq.filter (fun s -> not (upstream |> List.exists s.Callee.StartsWith)) |> List.ofSeq
                let listed = sites |> Seq.map string |> String.concat "\n  "
                Expect.isEmpty sites $"Scalar temporaries in {t.Assembly.GetName().Name}:\n  {listed}"
        }

        test "ScalarOps compute the same bits as the TorchSharp operators they replace" {
            let g = new torch.Generator(7UL)
            let a = randn([| 33L; 17L |], generator = g)
            let b = randn([| 33L; 17L |], generator = g)
            let same (x: Tensor) (y: Tensor) what = Expect.isTrue (x.dtype = y.dtype && x.shape = y.shape && x.eq(y).all().ToBoolean()) what
            same (a.Plus(b)) (a + b) "a + b"
            same (a.Plus(0.3)) (a + 0.3) "a + 0.3"
            same (a.PlusInteger(1L)) (a + 1) "a + 1"
            same (a.Minus(0.3)) (a - 0.3) "a - 0.3"
            same (a.Subtracted(0.3)) (0.3 - a) "0.3 - a"
            same (a.SubtractedInteger(1L)) (1 - a) "1 - a"
            same (a.Times(0.7)) (a * 0.7) "a * 0.7"
            same (a.TimesInteger(-2L)) (-2 * a) "-2 * a"
            same (a.Over(0.7)) (a / 0.7) "a / 0.7"
            same (a.OverInteger(128L)) (a / 128L) "a / 128"
            same (a.Squared()) (a.square()) "a.square()"
            same (Scalars.Softplus(a)) (nn.functional.softplus(a)) "softplus"
            same (Scalars.Softplus(a, 2.0, 5.0)) (nn.functional.softplus(a, 2.0, 5.0)) "softplus(beta 2, threshold 5)"
            same (ScalarFactories.Arange(5L, ScalarType.Int64, CPU)) (arange(5L, dtype = ScalarType.Int64)) "arange(5)"
            same (ScalarFactories.Arange(2L, 9L, ScalarType.Int64, CPU)) (arange(2L, 9L, dtype = ScalarType.Int64)) "arange(2, 9)"
            let c = a.clone()
            same (c.PlusInPlace(b)) (a + b) "a.add_(b)"
        }

        test "Adam into its workspace equals Adam allocating, step for step; its host count resumes from the saved count" {
            let g = new torch.Generator(11UL)
            let w = randn([| 20L; 30L |], dtype = f64, generator = g)
            let rule = StepRules.Adam(1e-2)
            let withWorkspace = rule.Init(w, false)
            let without = rule.Init(w, false)
            Expect.equal withWorkspace.Workspace.Count 2 "a variable that lives for the run gets two scratch tensors"
            let plain = new StepState(without.Slots)
            for step in 1 .. 5 do
                let d = randn([| 20L; 30L |], dtype = f64, generator = g)
                use _ = no_grad()
                let a = rule.Displacement(d, withWorkspace).clone()
                let b = rule.Displacement(d, plain)
                Expect.isTrue (a.eq(b).all().ToBoolean()) $"step {step}: the same displacement"
            // A state restored from a checkpoint (count 5) continues at step 6.
            let restored = rule.Init(w, false)
            for k in 0 .. 2 do restored.Slots.[k].copy_(withWorkspace.Slots.[k]) |> ignore
            let d = randn([| 20L; 30L |], dtype = f64, generator = g)
            use _ = no_grad()
            let a = rule.Displacement(d, restored).clone()
            let b = rule.Displacement(d, withWorkspace)
            Expect.isTrue (a.eq(b).all().ToBoolean()) "the restored state's sixth step equals the uninterrupted one's"
            Expect.equal (withWorkspace.Slots.[2].ToDouble()) 6.0 "the count tensor still counts (checkpoints save it)"
        }

        test "a batch game divides by B in place only where the gradient is its own: two variables sharing autograd's gradient each get c/B once" {
            let c = torch.tensor([| 1.0; 2.0; 4.0 |], dtype = f64)
            let w1 = zeros(3L, dtype = f64).requires_grad_(true)
            let w2 = zeros(3L, dtype = f64).requires_grad_(true)
            use batch = new MiniBatch(arange(8L, dtype = ScalarType.Int64), zeros(8L, 1L, dtype = f64), zeros(8L, dtype = ScalarType.Int64))
            use game = new TwinGame(batch, w1, w2, c)
            let directions = (game :> IGame).Operator((game :> IGame).Players).[0]
            for d in directions do
                Expect.isTrue (torch.allclose(d, c / 8.0, 0.0, 0.0)) $"c/B exactly, got {d.str()}"
        }

        test "the Scalar cache does not grow with the run: values that change every step or epoch (Adam's bias corrections, mu, schedule factors) are held for the call" {
            for name in [ "penalty"; "am-adam"; "extraprop" ] do
                trainEpochs 1 name |> ignore
                let before = Scalars.Cached
                trainEpochs 2 name |> ignore
                Expect.equal Scalars.Cached before $"{name}: two epochs cache no value one did not"
        }

        test "every family trains beside a thread forcing garbage collections without a LibTorch failure" {
            let mutable done' = []
            let collections =
                underGcPressure (fun () ->
                    for name in families do
                        let accuracy = trainOneEpoch name
                        Expect.isTrue (Double.IsFinite accuracy) $"{name} finished"
                        done' <- name :: done')
            Expect.equal (List.rev done') families "every family ran"
            Expect.isGreaterThan collections 10 "collections ran beside the training"
        }
    ]
