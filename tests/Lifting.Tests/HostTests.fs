module Lifting.Tests.HostTests

open Expecto

[<Tests>]
let tests = testList "HostTests" []
