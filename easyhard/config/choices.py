"""Allowed values of every choice in ``params.yaml``: defined here once, imported everywhere."""

METHODS = ("dpfeta", "dpdm", "fetapro", "nonprivate")  # easyhard.pipeline.methods: the table
# The params sections whose budget_share each method spends before DP-SGD (the ceiling spends
# none); easyhard.pipeline.methods checks that its table agrees.
WARMUP_SECTIONS = {
    "dpfeta": ("central",),
    "dpdm": (),
    "fetapro": ("central", "frequency"),
    "nonprivate": (),
}
# A method whose own warm-up may be planned off, and the method its run then equals (its stages
# share that run: easyhard.pipeline.sharing; easyhard.pipeline.methods checks the table agrees).
SHARES_RUN_OF = {"fetapro": "dpfeta"}
DATASETS = (
    "mnist_offline",
    "digits",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "celeba",
    "camelyon",
    "folder",
)
BUNDLED_DATASETS = ("mnist_offline", "digits")  # shipped with a package: data.root is not read
OFFICIAL_SPLITS = ("mnist", "fashion_mnist", "cifar10", "celeba", "camelyon")
CLASSIFIERS = ("cnn", "resnet", "logreg")  # downstream classifiers (easyhard.classifiers)
ACCOUNTANTS = ("prv", "pld", "rdp")  # easyhard.privacy.accounting
RANDOMNESS = ("secure", "seeded")  # easyhard.privacy.randomness: where DP noise and masks come from
SAMPLERS = ("heun", "euler", "dpmsolver", "sde-dpmsolver", "restart")  # easyhard.samplers.sample
GRAD_SAMPLERS = ("layerwise", "vmap")  # easyhard.dpsgd: per-example gradient engines
PRECISIONS = ("auto", "fp32", "bf16")  # easyhard.compute
WARMUP_PLANS = ("auto", "fixed")  # easyhard.warmup: planned for signal, or as written
