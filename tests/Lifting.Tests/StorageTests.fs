module Lifting.Tests.StorageTests

open System
open System.IO
open Expecto
open TorchSharp
open type TorchSharp.torch
open Lifting
open Lifting.Data
open Lifting.Programs
open Lifting.Storage
open Lifting.Training
open Lifting.Tests.DataTests

/// Same dtype, shape and values, bit for bit.
let same (a: Tensor) (b: Tensor) =
    a.dtype = b.dtype && a.shape = b.shape && (a.NumberOfElements = 0L || a.eq(b).all().ToBoolean())

[<Tests>]
let tests =
    testList "StorageTests" [
        test "safetensors round-trip every dtype, shape and the metadata, and the header follows the format" {
            let path = Path.Combine(tempDir (), "t.safetensors")
            let tensors =
                [| NamedTensor("f32", randn([| 3L; 4L |]))
                   NamedTensor("f64", randn([| 2L |], dtype = ScalarType.Float64))
                   NamedTensor("i64", arange(5L, dtype = ScalarType.Int64))
                   NamedTensor("u8", tensor([| 1uy; 255uy |]))
                   NamedTensor("scalar", tensor(3.5f))
                   NamedTensor("empty", zeros([| 0L; 3L |])) |]
            SafeTensors.Save(path, tensors, readOnlyDict [ "note", "λ → ok" ])
            use file = SafeTensors.Load(path)
            Expect.equal file.Metadata.["note"] "λ → ok" "metadata"
            for t in tensors do
                let read = file.[t.Name]
                Expect.equal read.dtype t.Value.dtype $"{t.Name}: dtype"
                Expect.sequenceEqual read.shape t.Value.shape $"{t.Name}: shape"
                Expect.isTrue (same read t.Value) $"{t.Name}: values bit for bit"
            let raw = File.ReadAllBytes path
            let headerLength = BitConverter.ToUInt64(raw, 0)
            Expect.equal (headerLength % 8UL) 0UL "the header is padded to 8 bytes"
            let header = Text.Encoding.UTF8.GetString(raw, 8, Convert.ToInt32 headerLength)
            Expect.stringContains header "\"f32\":{\"dtype\":\"F32\",\"shape\":[3,4],\"data_offsets\":[0,48]}" "a safetensors entry"
            Expect.equal (Convert.ToInt64 raw.Length) (8L + Convert.ToInt64 headerLength + 48L + 16L + 40L + 2L + 4L) "exactly the data after the header"
        }
        test "a truncated or foreign file is refused with one line naming it" {
            let dir = tempDir ()
            let path = Path.Combine(dir, "w.safetensors")
            SafeTensors.Save(path, [| NamedTensor("a", ones([| 100L |])) |])
            let cut = Path.Combine(dir, "cut.safetensors")
            File.WriteAllBytes(cut, File.ReadAllBytes(path).[.. 100])
            expectFormatError (fun () -> SafeTensors.Load(cut) |> ignore) [ "cut.safetensors"; "truncated" ]
            let text = Path.Combine(dir, "text.safetensors")
            File.WriteAllText(text, "hello, this is not a tensor file at all")
            expectFormatError (fun () -> SafeTensors.Load(text) |> ignore) [ "text.safetensors" ]
        }
        test "the library reads a weights file back: the same tensors, and a file for another program is refused by name" {
            let program = Net.Mlp([| 64L |], [| 64L; 16L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            use weights = program.Initialise(7)
            let path = Path.Combine(tempDir (), "w.safetensors")
            WeightsFile.Save(path, weights, readOnlyDict [ "net", "64-16-10" ])
            use back = WeightsFile.Load(path, program)
            for a, b in Seq.zip weights.Tensors back.Tensors do
                Expect.isTrue (same a b) "bit for bit"
            let metadata = WeightsFile.Metadata(path)
            Expect.equal metadata.["format"] "lifting-weights" "format"
            Expect.equal metadata.["net"] "64-16-10" "the caller's metadata"
            let other = Net.Mlp([| 64L |], [| 64L; 32L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            expectFormatError (fun () -> WeightsFile.Load(path, other) |> ignore) [ "w.safetensors"; "block1.dense(64→16).weight"; "is not a parameter" ]
        }
        test "a layer repeated within a block gets a name of its own, and its weights file round-trips" {
            // Two dense(8→8) in the first block: before they were numbered, saving refused the duplicate name.
            let program = NetSpec.Build("dense:8,relu,dense:8,relu,dense:8,relu,cut,dense:3", [| 5L |], 3, Activations.ReLU, Losses.CrossEntropy)
            let names = program.ParameterNames |> List.ofSeq
            Expect.equal (List.distinct names) names "every parameter name is unique"
            Expect.containsAll names [ "block1.dense(5→8).weight"; "block1.dense(8→8).weight"; "block1.dense(8→8)#2.weight"; "block2.dense(8→3).bias" ] "repeats numbered from the second on"
            use weights = program.Initialise(3)
            let path = Path.Combine(tempDir (), "repeated.safetensors")
            WeightsFile.Save(path, weights, readOnlyDict [])
            use back = WeightsFile.Load(path, program)
            for a, b in Seq.zip weights.Tensors back.Tensors do
                Expect.isTrue (same a b) "bit for bit, each repeated layer in its own place"
        }
        test "a checkpoint restores a lifted problem's complete state in place and refuses another problem's" {
            use data = DatasetCatalog.Load "digits"
            let program = Net.Mlp(data.Train.ExampleShape, [| 64L; 16L; 16L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            let method = Methods.Resolve("extraprop")
            let path = Path.Combine(tempDir (), "c.safetensors")
            let options = TrainingOptions(Epochs = 3, BatchSize = 64)
            let control = TrainingControl(OnCheckpoint = Action<TrainingSnapshot>(fun s -> if s.State.CompletedEpochs = 1 then Checkpoint.Save(path, s)))
            use _ = Trainer.Train(program, data, method.Formulation, method.Solver, method.StepRules, options, null, null, control)
            use checkpoint = Checkpoint.Load(path)
            Expect.equal checkpoint.State.CompletedEpochs 1 "after epoch 1"
            Expect.equal checkpoint.State.History.Count 1 "with its history"
            let fresh = Methods.Resolve("extraprop")
            use weights = program.Initialise(0)
            let context = Lifting.Formulations.LiftContext(program, data.Train, CPU, ScalarType.Float32, 0, fresh.StepRules, fresh.Solver.MemorySlots)
            use problem = fresh.Formulation.Lift(context, weights)
            let state = problem :?> Lifting.Formulations.ICheckpointable
            checkpoint.RestoreInto(state)
            use file = SafeTensors.Load(path)
            for KeyValue(name, t) in state.StateTensors do
                Expect.isTrue (same t file.["problem/" + name]) $"{name} restored"
            Expect.isTrue (state.StateTensors.Keys |> Seq.exists (fun k -> k.StartsWith "store/lambda1")) "the per-example multipliers are part of the state"
            let penalty = Methods.Resolve("penalty")
            let context2 = Lifting.Formulations.LiftContext(program, data.Train, CPU, ScalarType.Float32, 0, penalty.StepRules, penalty.Solver.MemorySlots)
            use weights2 = program.Initialise(0)
            use other = penalty.Formulation.Lift(context2, weights2)
            let ex = Expect.throwsC (fun () -> checkpoint.RestoreInto(other :?> Lifting.Formulations.ICheckpointable)) id
            Expect.stringContains ex.Message "another method or network" "refused"
        }
        test "the memory estimate refuses a network the size of a typo and passes the usual ones" {
            let big = NetSpec.Build("64-500000000-10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy)
            let estimate = MemoryEstimate.Of(big, 1294, 64, Lifting.Formulations.SingleShooting.Instance)
            Expect.isGreaterThan estimate.TotalBytes (1L <<< 40) "more than a TiB"
            let small = NetSpec.Build("64-128-10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy)
            let usual = MemoryEstimate.Of(small, 1294, 64, (Methods.Resolve "extraprop").Formulation)
            Expect.isLessThan usual.TotalBytes (100L <<< 20) "well under 100 MiB"
            Expect.isGreaterThan usual.PerExampleBytes (1294L * 128L * 2L * 4L - 1L) "states and multipliers per example"
        }
    ]
