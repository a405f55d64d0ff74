"""Sample-quality metrics: Fréchet distance (closed forms), classifier score, precision/recall, the full report."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import linalg

from pipeline.classifier_trainer import ClassifierTrainer
from pipeline.config import Config
from pipeline.data.processed import ProcessedData, load_processed
from pipeline.estimators import GaussianObservationModel
from pipeline.evaluation import DecoderMean, evaluate_gaussian_likelihood, sample_quality_report, seeded_sampler
from pipeline.gan_trainer import build_generator
from pipeline.metrics import frechet_distance, frechet_distance_from_moments, inception_score, precision_recall
from pipeline.models.hvae import HVAE, HVAEConfig
from pipeline.seeds import seed_everything
from pipeline.vae_trainer import build_vae


@torch.no_grad()
def test_seeded_sampler_draws_a_vae_from_its_own_prior() -> None:
    """The samples evaluate_samples scores come from the model: a two-layer VAE's z2 from its VampPrior and z1 from
    p(z1|z2), here shifted to mean 3, not from N(0, I); the same images again for the same seed."""
    torch.manual_seed(0)
    model = HVAE(
        HVAEConfig(
            (1, 4, 4), 2, arch="gated_mlp", hidden_sizes=(8,), top_latent_dim=2, prior="vampprior", pseudo_inputs=3
        )
    ).eval()
    model.lower_prior[-1].bias[:2] += 3.0  # p(z1|z2)'s mean moves by 3

    def latents(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return z  # "decodes" to the latent itself, to read the sampler's z

    own = seeded_sampler(latents, model.latent_dim, torch.device("cpu"), None, 7, model.prior_from_noise)
    z = own(4000)
    assert torch.equal(z, own(4000))
    reference = model.sample_prior(4000, torch.Generator().manual_seed(1))
    assert torch.allclose(z.mean(0), reference.mean(0), atol=0.15)
    assert torch.allclose(z.std(0), reference.std(0), rtol=0.1)
    assert z[:, :2].mean() > 2.5  # N(0, I) latents would have mean 0
    standard = seeded_sampler(latents, model.latent_dim, torch.device("cpu"), None, 7)(4000)
    assert standard[:, :2].mean().abs() < 0.1


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift() -> None:
    features = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    small, large = (frechet_distance(features, features + shift) for shift in (0.5, 2.0))
    assert small == pytest.approx(8 * 0.25, rel=1e-6)  # ||mu1 - mu2||^2 with equal covariances
    assert large == pytest.approx(8 * 4.0, rel=1e-6) and large > small


def test_frechet_distance_matches_the_closed_form_for_gaussians() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(6), b @ b.T  # non-commuting; cov2 is rank-deficient-ish but PSD
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    cross = linalg.sqrtm(cov1 @ cov2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * cross)
    assert frechet_distance_from_moments(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)
    # diagonal case: sum (sqrt a - sqrt b)^2, and it is symmetric
    d1, d2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert frechet_distance_from_moments([0, 0], d1, [1, 0], d2) == pytest.approx(1 + (1 - 3) ** 2 + (2 - 1) ** 2)
    assert frechet_distance_from_moments([1, 0], d2, [0, 0], d1) == pytest.approx(6.0)
    # sampled sets approach the population value
    rng = np.random.default_rng(2)
    x = rng.multivariate_normal(mu1, cov1, size=20000)
    y = rng.multivariate_normal(mu2, cov2, size=20000)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.05)


def test_inception_score_bounds() -> None:
    confident_and_diverse = torch.eye(10).repeat(20, 1)
    assert inception_score(confident_and_diverse, splits=4)[0] == pytest.approx(10.0)
    uniform = torch.full((200, 10), 0.1)
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    one_class = torch.eye(10)[torch.zeros(200, dtype=torch.long)]
    assert inception_score(one_class)[0] == pytest.approx(1.0)


def test_precision_and_recall_separate_quality_from_coverage() -> None:
    rng = torch.Generator().manual_seed(0)
    real = torch.randn(400, 2, generator=rng)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    collapsed = torch.randn(400, 2, generator=rng) * 0.05  # good samples of one mode only
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.95 and recall < 0.2
    off = torch.randn(400, 2, generator=rng) + 10.0  # samples nowhere near the data
    assert precision_recall(real, off) == (0.0, 0.0)


@pytest.mark.parametrize("labelled", [True, False])
def test_sample_quality_report_with_a_real_classifier(digits_processed_dir, labelled: bool) -> None:
    """Real images score better than noise in the features of a classifier trained on the classes or, without
    labels, on telling transformations apart; the classifier score needs classes."""
    data = load_processed(digits_processed_dir)
    if not labelled:
        data = dataclasses.replace(data, y=None, num_classes=None)
    # seeded (train() seeds the initial weights; here the trainer is built directly). On 200 images the label-free
    # classifier is weak: with seed 0 of 0-4 its features put noise inside the real images' neighbourhoods
    seed_everything(3)
    trainer = ClassifierTrainer(Config(), data, torch.device("cpu"))
    for epoch in range(15):
        trainer.train_epoch(epoch)
    classifier = trainer.model.eval()
    test, train = torch.from_numpy(data.x["test"]), torch.from_numpy(data.x["train"])

    def real_sampler(n: int) -> torch.Tensor:
        return train[-n:]

    def noise_sampler(n: int) -> torch.Tensor:
        return torch.rand(n, *data.image_shape, generator=torch.Generator().manual_seed(0))

    real = sample_quality_report(real_sampler, classifier, test, train, n=1000)
    noise = sample_quality_report(noise_sampler, classifier, test, train, n=1000)
    assert real["num_images"] == noise["num_images"] == 50  # capped by the test split
    assert real["frechet_floor"] == noise["frechet_floor"]
    assert noise["frechet_distance"] > 2 * real["frechet_distance"]
    assert noise["precision"] < real["precision"] and noise["recall"] < real["recall"]
    for report in (real, noise):
        assert all(np.isfinite(v) for v in report.values())
        assert ("classifier_score" in report) == labelled
        assert not labelled or 1.0 <= report["classifier_score"] <= 10.0
    with pytest.raises(ValueError, match="sampler returned images of shape"):
        sample_quality_report(lambda n: torch.rand(n, 1, 4, 4), classifier, test, train, n=20)


def test_too_few_real_images_name_the_split_and_what_to_do() -> None:
    """Checked before the classifier (here none) sees an image."""
    few, many = torch.rand(3, 1, 8, 8), torch.rand(10, 1, 8, 8)
    need = "the sample metrics need at least 4; "
    with pytest.raises(ValueError, match=rf"^the valid split has 3 image\(s\) but {need}raise data.validation_fr"):
        sample_quality_report(lambda n: many[:n], None, few, many, n=10, split="valid")
    with pytest.raises(ValueError, match=rf"^the test split has 3 image\(s\) but {need}use a dataset with more"):
        sample_quality_report(lambda n: many[:n], None, few, many, n=10)


def test_gan_log_likelihood_depends_on_the_seed_only(digits_processed_dir) -> None:
    """The GAN's likelihood is a DVC metric (evaluate_samples.json's gan.gaussian_ais, its card in the stage's card):
    two runs with one seed give the same JSON byte for byte (no timings)."""
    data = load_processed(digits_processed_dir)
    config = Config(latent_dim=4, gan=dataclasses.replace(Config().gan, hidden_sizes=[16]))
    settings = dataclasses.replace(config.evaluate, ais_points=4, ais_steps=8, ais_chains=2, ais_leapfrog_steps=2)
    torch.manual_seed(0)
    generator = build_generator(config, data.image_shape, data.num_classes).eval()
    first = json.dumps(evaluate_gaussian_likelihood(generator, data, settings, seed=0))
    assert json.dumps(evaluate_gaussian_likelihood(generator, data, settings, seed=0)) == first
    assert json.dumps(evaluate_gaussian_likelihood(generator, data, settings, seed=1)) != first
    metrics, card = json.loads(first)
    assert set(metrics) == {"log_px", "bits_per_dim"} and metrics["log_px"] == card["log_px"]
    assert card["points"] == 4 and "seconds" not in card


def test_a_conditional_generators_log_px_sums_over_the_classes(digits_processed_dir) -> None:
    """A class-conditional GAN's Gaussian log p(x) is log Σ_y p(y) p(x|y), comparable with an unconditional one's:
    it does not depend on the test labels, is above log p(y) + log p(x|y), and log p(x|y) is in the card."""
    data = load_processed(digits_processed_dir)
    config = Config(latent_dim=4, gan=dataclasses.replace(Config().gan, hidden_sizes=[16], conditional=True))
    settings = dataclasses.replace(config.evaluate, ais_points=4, ais_steps=8, ais_chains=2, ais_leapfrog_steps=2)
    torch.manual_seed(0)
    generator = build_generator(config, data.image_shape, data.num_classes).eval()
    metrics, card = evaluate_gaussian_likelihood(generator, data, settings, seed=0)
    prior = np.bincount(data.y["train"], minlength=10) / len(data.y["train"])
    assert metrics["log_px"] > card["given_y"]["log_px"] + np.log(prior[data.y["test"][:4]]).mean()
    assert "conditional on 10 classes" in card["labels"]
    relabelled = load_processed(digits_processed_dir)
    relabelled.y["test"][:] = (relabelled.y["test"] + 3) % 10
    other_metrics, other = evaluate_gaussian_likelihood(generator, relabelled, settings, seed=0)
    assert other_metrics == metrics and other["given_y"] != card["given_y"]


def test_stored_binary_images_are_dequantized_over_two_levels_whatever_the_binarize_setting(
    digits_processed_dir,
) -> None:
    """0/1 images read as they are (binarize: none, e.g. a binarized MNIST .npz) are the same two-level data as
    after static binarization: the same Gaussian AIS figure, not one ~D·ln 128 nats lower."""
    digits = load_processed(digits_processed_dir)
    x = {split: (images > 0.5).astype(np.float32) for split, images in digits.x.items()}
    config = Config(latent_dim=4, gan=dataclasses.replace(Config().gan, hidden_sizes=[16]))
    settings = dataclasses.replace(config.evaluate, ais_points=4, ais_steps=8, ais_chains=2, ais_leapfrog_steps=2)
    torch.manual_seed(0)
    generator = build_generator(config, digits.image_shape, None).eval()
    static, stored = (
        evaluate_gaussian_likelihood(generator, ProcessedData(x, None, binarize, None, "npz"), settings, seed=0)[0]
        for binarize in ("static", "none")
    )
    assert static == stored


def test_gan_and_vae_see_the_same_points_and_the_vae_keeps_its_own_prior(digits_processed_dir) -> None:
    """Nothing about the model enters the test points, their dequantization or the chains' noise: the same function
    behind another module gives the same JSON; a VAE decoder is scored under the VAE's prior (here a VampPrior)."""
    data = load_processed(digits_processed_dir)
    config = Config(latent_dim=4, gan=dataclasses.replace(Config().gan, hidden_sizes=[16]))
    settings = dataclasses.replace(config.evaluate, ais_points=4, ais_steps=8, ais_chains=2, ais_leapfrog_steps=2)
    torch.manual_seed(0)
    generator = build_generator(config, data.image_shape, None).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.latent_dim, self.num_classes = generator, generator.latent_dim, None

        def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            return self.inner(z, y)

    first = json.dumps(evaluate_gaussian_likelihood(generator, data, settings, seed=0))
    assert json.dumps(evaluate_gaussian_likelihood(Wrapped(), data, settings, seed=0)) == first
    vae_config = dataclasses.replace(
        config, vae=dataclasses.replace(config.vae, hidden_sizes=[16], prior="vampprior", pseudo_inputs=3)
    )
    vae = build_vae(vae_config, data.image_shape, None).eval()
    z = torch.randn(5, 2, 4)
    model = GaussianObservationModel(DecoderMean(vae), 0.1, vae)
    assert torch.equal(model.log_prior(z), vae.log_prior(z))
    assert not torch.allclose(GaussianObservationModel(DecoderMean(vae), 0.1).log_prior(z), vae.log_prior(z))
    metrics, card = evaluate_gaussian_likelihood(DecoderMean(vae), data, settings, seed=0, prior=vae)
    assert np.isfinite(metrics["log_px"]) and card["points"] == 4
